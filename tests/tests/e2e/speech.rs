//! Speech-to-text through the gateway: a real recording (pocketsphinx-testdata's goforward.raw,
//! "go forward ten meters", 16 kHz mono) recognized by the reference speech backend, as raw PCM
//! and as WAV at other rates and channel counts; bad audio refused with what is accepted.

use std::time::Duration;

use im_tests::im::ImSystem;
use serde_json::json;

use crate::im_flow::base64_encode;

const GOFORWARD: &str = "/usr/share/pocketsphinx/test/data/goforward.raw";

fn samples() -> Vec<i16> {
    let raw =
        std::fs::read(GOFORWARD).expect("pocketsphinx-testdata installed (scripts/bootstrap.sh)");
    raw.chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// `samples` (16 kHz mono) as a WAV at `rate` with `channels`, by repeating samples: the
/// backend has to convert it back.
fn wav_at(samples: &[i16], rate: u32, channels: u16) -> Vec<u8> {
    let factor = (rate / 16_000) as usize;
    let out: Vec<i16> = samples
        .iter()
        .flat_map(|s| std::iter::repeat_n(*s, factor * channels as usize))
        .collect();
    im_backends::audio::wav_bytes(&out, rate, channels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_recording_comes_back_as_its_words() {
    let sys = ImSystem::start(|_| {}).await;
    im_tests::wait_for(
        "speech backend healthy",
        Duration::from_secs(20),
        || async {
            (sys.gw.endpoint_health("speech", sys.backend).await == "healthy").then_some(())
        },
    )
    .await;
    let alice = sys.user("alice", "d1").await;
    let samples = samples();
    let raw: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();

    for (audio, format) in [
        (raw.clone(), "pcm16k"),
        (im_backends::audio::wav_bytes(&samples, 16_000, 1), "wav"),
        (wav_at(&samples, 48_000, 2), ""),
    ] {
        let reply = alice
            .ok(
                "speech/recognize",
                json!({ "audio": base64_encode(&audio), "format": format }),
            )
            .await;
        let text = reply["text"].as_str().unwrap_or_default();
        assert!(text.contains("go forward ten meters"), "{format}: {reply}");
        let ms = reply["duration_ms"].as_u64().unwrap_or_default();
        assert!((2000..4000).contains(&ms), "{reply}");
    }

    // Bad audio: 400 naming what is accepted; nothing recognized.
    let too_long = vec![0u8; 61 * 32_000];
    for (body, why) in [
        (
            json!({ "audio": base64_encode(b"ID3\x04..."), "format": "mp3" }),
            "send `wav`",
        ),
        (
            json!({ "audio": base64_encode(b"RIFF\0\0\0\0WAVEjunk"), "format": "wav" }),
            "no `data` chunk",
        ),
        (
            json!({ "audio": base64_encode(&too_long), "format": "pcm16k" }),
            "at most 60 s",
        ),
        (json!({ "audio": "" }), "audio is empty"),
    ] {
        let (status, reply) = alice.call("speech/recognize", body).await;
        assert_eq!(status, 400, "{reply}");
        assert!(
            reply["message"].as_str().unwrap_or_default().contains(why),
            "{reply}"
        );
    }
    // Signed out: refused at the gateway.
    let (status, _) = sys
        .client()
        .call("speech/recognize", json!({ "audio": base64_encode(&raw) }))
        .await;
    assert_eq!(status, 401);
}
