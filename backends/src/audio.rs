//! Audio for the recognizer: WAV (RIFF) or raw PCM in, 16 kHz mono 16-bit samples out. Pure
//! functions over bytes, so the parser is reachable from tests and fuzzing without a recognizer.
//!
//! Accepted WAV: PCM 16-bit or IEEE float 32-bit (also inside WAVE_FORMAT_EXTENSIBLE), 1 or 2
//! channels (averaged), 8 to 48 kHz (linearly resampled to 16 kHz). Everything else is refused
//! with a message naming what was found and what is accepted.

/// The recognizer's rate.
pub const RATE: u32 = 16_000;

const PCM: u16 = 1;
const FLOAT: u16 = 3;
const EXTENSIBLE: u16 = 0xFFFE;

/// 16 kHz mono samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Pcm16k(pub Vec<i16>);

impl Pcm16k {
    pub fn duration_ms(&self) -> u64 {
        self.0.len() as u64 * 1000 / u64::from(RATE)
    }

    /// Little-endian bytes, as `pocketsphinx_continuous -infile x.raw` reads them.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|s| s.to_le_bytes()).collect()
    }
}

/// Decodes `audio` as `format` (`wav`, `pcm16k`, or empty: sniffed).
pub fn decode(audio: &[u8], format: &str) -> Result<Pcm16k, String> {
    let format = match format {
        "" if audio.starts_with(b"RIFF") => "wav",
        "" => "pcm16k",
        f => f,
    };
    match format {
        "wav" => decode_wav(audio),
        "pcm16k" => {
            if !audio.len().is_multiple_of(2) {
                return Err("pcm16k audio must be whole 16-bit samples (an even number of bytes)".into());
            }
            Ok(Pcm16k(le_i16(audio)))
        }
        other => Err(format!(
            "format `{other}` is not supported; send `wav` (16-bit PCM or 32-bit float, 8-48 kHz) or `pcm16k` (raw 16-bit mono at 16 kHz)"
        )),
    }
}

fn le_i16(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

struct Format {
    encoding: u16,
    channels: u16,
    rate: u32,
    bits: u16,
}

/// Parses RIFF/WAVE chunk by chunk; `data` may be truncated (streams write a huge size).
pub fn decode_wav(b: &[u8]) -> Result<Pcm16k, String> {
    if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return Err("not a WAV file (no RIFF/WAVE header)".into());
    }
    let mut at = 12;
    let mut format = None;
    while at + 8 <= b.len() {
        let id = &b[at..at + 4];
        let size = u32_at(b, at + 4) as usize;
        let body = at + 8;
        let end = body.saturating_add(size).min(b.len());
        match id {
            b"fmt " => {
                if end - body < 16 {
                    return Err("WAV `fmt ` chunk is shorter than 16 bytes".into());
                }
                let mut encoding = u16_at(b, body);
                if encoding == EXTENSIBLE && end - body >= 26 {
                    // The sub-format GUID starts with the actual format code.
                    encoding = u16_at(b, body + 24);
                }
                format = Some(Format {
                    encoding,
                    channels: u16_at(b, body + 2),
                    rate: u32_at(b, body + 4),
                    bits: u16_at(b, body + 14),
                });
            }
            b"data" => {
                let f = format
                    .as_ref()
                    .ok_or("WAV `data` chunk comes before its `fmt ` chunk")?;
                return convert(&b[body..end], f);
            }
            _ => {}
        }
        // Chunks are padded to an even size.
        at = body.saturating_add(size).saturating_add(size & 1);
    }
    Err("WAV file has no `data` chunk".into())
}

fn convert(data: &[u8], f: &Format) -> Result<Pcm16k, String> {
    if !(1..=2).contains(&f.channels) {
        return Err(format!(
            "WAV has {} channels; send mono or stereo",
            f.channels
        ));
    }
    if !(8_000..=48_000).contains(&f.rate) {
        return Err(format!(
            "WAV sample rate is {} Hz; send 8 to 48 kHz (16 kHz is best)",
            f.rate
        ));
    }
    let samples: Vec<f32> = match (f.encoding, f.bits) {
        (PCM, 16) => le_i16(data)
            .into_iter()
            .map(|s| f32::from(s) / 32768.0)
            .collect(),
        (FLOAT, 32) => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        (PCM, bits) => {
            return Err(format!(
                "WAV is {bits}-bit PCM; send 16-bit PCM or 32-bit float"
            ))
        }
        (code, bits) => {
            return Err(format!(
                "WAV encoding {code} ({bits}-bit) is not supported; send 16-bit PCM or 32-bit float"
            ))
        }
    };
    let mono: Vec<f32> = if f.channels == 2 {
        samples
            .chunks_exact(2)
            .map(|p| (p[0] + p[1]) / 2.0)
            .collect()
    } else {
        samples
    };
    let resampled = resample(&mono, f.rate, RATE);
    Ok(Pcm16k(
        resampled
            .into_iter()
            .map(|s| (s.clamp(-1.0, 1.0) * 32767.0) as i16)
            .collect(),
    ))
}

/// Linear interpolation from `from` Hz to `to` Hz (enough for speech recognition's 8 kHz band).
fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || input.is_empty() {
        return input.to_vec();
    }
    let out_len = (input.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let step = f64::from(from) / f64::from(to);
    (0..out_len)
        .map(|i| {
            let pos = i as f64 * step;
            let j = pos as usize;
            let frac = (pos - j as f64) as f32;
            let a = input[j.min(input.len() - 1)];
            let b = input[(j + 1).min(input.len() - 1)];
            a + (b - a) * frac
        })
        .collect()
}

/// A WAV file of 16-bit PCM `samples` (mono) at `rate`: for tests and the web client's format.
pub fn wav_bytes(samples: &[i16], rate: u32, channels: u16) -> Vec<u8> {
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut out = Vec::with_capacity(44 + data.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&PCM.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2 * u32::from(channels)).to_le_bytes());
    out.extend_from_slice(&(2 * channels).to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_at_16k_mono_is_taken_as_is() {
        let samples: Vec<i16> = (0..1600).map(|i| (i * 7) as i16).collect();
        let pcm = decode(&wav_bytes(&samples, 16_000, 1), "").unwrap();
        assert_eq!(pcm.0.len(), 1600);
        assert_eq!(pcm.duration_ms(), 100);
        assert!(pcm.0.iter().zip(&samples).all(|(a, b)| (a - b).abs() <= 1));
    }

    #[test]
    fn other_rates_and_stereo_become_16k_mono() {
        // 48 kHz stereo, 0.5 s: left and right averaged, a third of the samples kept.
        let stereo: Vec<i16> = (0..48_000)
            .map(|i| if i % 2 == 0 { 1000 } else { 3000 })
            .collect();
        let pcm = decode(&wav_bytes(&stereo, 48_000, 2), "wav").unwrap();
        assert_eq!(pcm.0.len(), 8000);
        assert!(
            pcm.0.iter().all(|s| (s - 2000).abs() <= 1),
            "{:?}",
            &pcm.0[..4]
        );
        let pcm = decode(&wav_bytes(&[0; 8000], 8000, 1), "wav").unwrap();
        assert_eq!(pcm.duration_ms(), 1000);
    }

    #[test]
    fn raw_pcm_is_sniffed_and_checked() {
        assert_eq!(decode(&[1, 0, 2, 0], "").unwrap().0, vec![1, 2]);
        assert!(decode(&[1, 0, 2], "pcm16k")
            .unwrap_err()
            .contains("even number"));
    }

    #[test]
    fn unsupported_audio_says_what_is_accepted() {
        let mut eight_bit = wav_bytes(&[0; 10], 16_000, 1);
        eight_bit[34] = 8; // bits per sample
        for (audio, format, why) in [
            (b"OggS....".to_vec(), "wav", "not a WAV file"),
            (b"x".to_vec(), "webm", "`webm` is not supported"),
            (eight_bit, "wav", "8-bit PCM; send 16-bit PCM"),
            (wav_bytes(&[0; 10], 96_000, 1), "wav", "96000 Hz"),
            (wav_bytes(&[0; 12], 16_000, 3), "wav", "3 channels"),
            (b"RIFF\0\0\0\0WAVE".to_vec(), "wav", "no `data` chunk"),
        ] {
            let e = decode(&audio, format).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn truncated_and_hostile_headers_never_panic() {
        let wav = wav_bytes(&[5; 100], 16_000, 1);
        for cut in 0..wav.len() {
            let _ = decode(&wav[..cut], "wav");
        }
        let mut huge = wav.clone();
        huge[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge, "wav").unwrap().0.len(), 100);
        let mut odd = wav;
        odd[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        let _ = decode(&odd, "wav");
    }
}
