//! The speech service (语音转文字): `Recognize` turns a voice message's audio into text with
//! PocketSphinx's command-line recognizer and its US-English model (Debian `pocketsphinx`,
//! `pocketsphinx-en-us`), run as a subprocess: the workspace denies `unsafe`, so no FFI.
//!
//! Bounded: audio bytes (the route's `max_body` and this service's own cap), audio length,
//! recognizers running at once (a caller waits at most [`QUEUE_WAIT`] for one), and each run's
//! time (the process is killed at the deadline). The audio is decoded here ([`crate::audio`]);
//! the recognizer only ever sees 16 kHz mono PCM.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use im_proto::im::speech::v1::speech_service_server::SpeechService;
use im_proto::im::speech::v1::{RecognizeReply, RecognizeRequest};
use tokio::sync::Semaphore;
use tonic::{Request, Response};

use crate::audio;
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};

pub const SERVICE_NAME: &str = "im.speech.v1.SpeechService";
/// How long a call waits for a free recognizer before RESOURCE_EXHAUSTED.
pub const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// Most bytes of recognizer output kept.
const MAX_OUTPUT: usize = 64 << 10;

/// Limits and the recognizer, from flags.
#[derive(Debug, Clone)]
pub struct SpeechConfig {
    /// `pocketsphinx_continuous` (searched on PATH) or a path to it.
    pub recognizer: PathBuf,
    /// Recognizers running at once.
    pub workers: usize,
    /// Longest audio accepted.
    pub max_duration: Duration,
    /// Largest audio accepted, in bytes.
    pub max_bytes: usize,
    /// Deadline of one recognizer run.
    pub timeout: Duration,
    /// Where the 16 kHz samples are written for the recognizer (removed after each run).
    pub scratch_dir: PathBuf,
}

impl Default for SpeechConfig {
    fn default() -> Self {
        Self {
            recognizer: "pocketsphinx_continuous".into(),
            workers: crate::cores(),
            max_duration: Duration::from_secs(60),
            max_bytes: 8 << 20,
            timeout: Duration::from_secs(30),
            scratch_dir: std::env::temp_dir(),
        }
    }
}

/// Whether `program` can be run: a path that exists, or a name found on PATH.
pub fn installed(program: &Path) -> bool {
    if program.components().count() > 1 {
        return program.is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

#[derive(Clone)]
pub struct SpeechSvc {
    cfg: Arc<SpeechConfig>,
    slots: Arc<Semaphore>,
    installed: bool,
    runs: Arc<AtomicU64>,
}

impl SpeechSvc {
    pub fn new(cfg: SpeechConfig) -> Self {
        let installed = installed(&cfg.recognizer);
        if !installed {
            tracing::error!(recognizer = %cfg.recognizer.display(), "speech recognizer not found: install pocketsphinx and pocketsphinx-en-us (scripts/bootstrap.sh does)");
        }
        Self {
            slots: Arc::new(Semaphore::new(cfg.workers.max(1))),
            cfg: Arc::new(cfg),
            installed,
            runs: Arc::default(),
        }
    }

    /// Whether the recognizer exists (the service reports NOT_SERVING otherwise).
    pub fn installed(&self) -> bool {
        self.installed
    }

    /// Checks and decodes the audio, then recognizes it.
    pub async fn recognize(&self, req: RecognizeRequest) -> Result<RecognizeReply, ApiError> {
        if !self.installed {
            return Err(ApiError::unavailable(
                "the speech recognizer is not installed on this backend (pocketsphinx, pocketsphinx-en-us)",
            ));
        }
        if !matches!(req.language.as_str(), "" | "en-US" | "en-us" | "en") {
            return Err(ApiError::invalid(format!(
                "language `{}` has no model here; use en-US",
                req.language
            )));
        }
        if req.audio.is_empty() {
            return Err(ApiError::invalid("audio is empty"));
        }
        if req.audio.len() > self.cfg.max_bytes {
            return Err(ApiError::invalid(format!(
                "audio is {} bytes; at most {} bytes",
                req.audio.len(),
                self.cfg.max_bytes
            )));
        }
        let pcm = audio::decode(&req.audio, &req.format).map_err(ApiError::invalid)?;
        let duration_ms = pcm.duration_ms();
        if duration_ms > self.cfg.max_duration.as_millis() as u64 {
            return Err(ApiError::invalid(format!(
                "audio is {:.1} s long; at most {} s",
                duration_ms as f64 / 1000.0,
                self.cfg.max_duration.as_secs()
            )));
        }
        let _slot = tokio::time::timeout(QUEUE_WAIT, self.slots.acquire())
            .await
            .map_err(|_| ApiError::exhausted("every speech recognizer is busy; try again shortly"))?
            .map_err(ApiError::internal)?;
        let text = self.run(&pcm).await?;
        Ok(RecognizeReply {
            text,
            duration_ms: duration_ms as u32,
        })
    }

    async fn run(&self, pcm: &audio::Pcm16k) -> Result<String, ApiError> {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        let file = Scratch(
            self.cfg
                .scratch_dir
                .join(format!("im-speech-{}-{n}.raw", std::process::id())),
        );
        tokio::fs::write(&file.0, pcm.to_le_bytes()).await?;
        let child = tokio::process::Command::new(&self.cfg.recognizer)
            .arg("-infile")
            .arg(&file.0)
            .args(["-logfn", "/dev/null"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                ApiError::internal(format!("starting {}: {e}", self.cfg.recognizer.display()))
            })?;
        let output = tokio::time::timeout(self.cfg.timeout, child.wait_with_output())
            .await
            .map_err(|_| {
                ApiError::deadline(format!(
                    "recognition took longer than {} s",
                    self.cfg.timeout.as_secs()
                ))
            })??;
        if !output.status.success() {
            return Err(ApiError::internal(format!(
                "{} exited with {}",
                self.cfg.recognizer.display(),
                output.status
            )));
        }
        let stdout = &output.stdout[..output.stdout.len().min(MAX_OUTPUT)];
        Ok(transcript(&String::from_utf8_lossy(stdout)))
    }
}

/// The recognizer prints one line per utterance: one line of lower-case words.
pub fn transcript(output: &str) -> String {
    output
        .split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A scratch file removed when dropped (the run's end, or its cancellation).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tonic::async_trait]
impl SpeechService for SpeechSvc {
    async fn recognize(&self, request: Request<RecognizeRequest>) -> ApiResult<RecognizeReply> {
        Caller::of(&request)?;
        Ok(Response::new(
            SpeechSvc::recognize(self, request.into_inner()).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcripts_are_one_line_of_words() {
        assert_eq!(
            transcript("go forward ten meters\n\nTURN left\n"),
            "go forward ten meters turn left"
        );
        assert_eq!(transcript("\n"), "");
    }

    #[tokio::test]
    async fn bad_requests_are_refused_before_any_recognizer_runs() {
        let svc = SpeechSvc::new(SpeechConfig {
            recognizer: "/bin/false".into(),
            max_duration: Duration::from_secs(1),
            max_bytes: 100_000,
            ..SpeechConfig::default()
        });
        let req = |audio: Vec<u8>, format: &str, language: &str| RecognizeRequest {
            audio,
            format: format.into(),
            language: language.into(),
        };
        for (r, why) in [
            (req(Vec::new(), "", ""), "empty"),
            (req(vec![0; 100_002], "pcm16k", ""), "at most 100000 bytes"),
            (
                req(vec![0; 64_000], "pcm16k", ""),
                "2.0 s long; at most 1 s",
            ),
            (req(vec![0; 4], "mp3", ""), "`mp3` is not supported"),
            (req(vec![0; 4], "", "zh-CN"), "use en-US"),
        ] {
            let e = svc.recognize(r).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(why), "{}", e.message());
        }
        // /bin/false runs and fails: an internal error with a reference, no details.
        let e = svc.recognize(req(vec![0; 3200], "", "")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
    }
}
