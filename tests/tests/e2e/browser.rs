//! The demo web client in a real browser: headless Chromium (Debian's package) driven by
//! playwright-core walks the whole chat flow as two users against the whole system
//! (`tests/browser/chat.mjs`), voice messages included: Chromium's fake microphone plays
//! pocketsphinx-testdata's "go forward ten meters" and both users see the transcript.
//! `scripts/bootstrap.sh` installs Chromium, Node.js, the package and the recording.

use std::path::Path;
use std::time::Duration;

use im_tests::im::ImSystem;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_chat_in_headless_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        dir.join("node_modules/playwright-core").exists()
            && Path::new("/usr/bin/chromium").exists(),
        "the browser test needs Chromium and playwright-core: run scripts/bootstrap.sh"
    );
    // The shipped route limits, as a real deployment has them.
    let sys = ImSystem::start_with(false, |_| {}, |_| {}).await;
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-shots");
    // The microphone's input: the recording as a 16 kHz WAV, with silence around it.
    let scratch = im_tests::ScratchDir::new("voice");
    let voice = scratch.path("goforward.wav");
    let raw = std::fs::read("/usr/share/pocketsphinx/test/data/goforward.raw")
        .expect("pocketsphinx-testdata installed (scripts/bootstrap.sh)");
    let mut samples = vec![0i16; 8_000];
    samples.extend(
        raw.chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]])),
    );
    samples.extend(std::iter::repeat_n(0i16, 32_000));
    std::fs::write(&voice, im_backends::audio::wav_bytes(&samples, 16_000, 1))
        .expect("write voice");
    let run = tokio::process::Command::new("node")
        .arg("chat.mjs")
        .arg("--url")
        .arg(format!("http://{}", sys.gw.edge))
        .arg("--shots")
        .arg(&shots)
        .arg("--voice")
        .arg(&voice)
        .current_dir(&dir)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the browser flow finishes within 120 s")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser flow failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok: screenshots"), "{stdout}");
    assert!(shots.join("chat-bob.png").exists());
}
