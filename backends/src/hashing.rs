//! Password hashing on a fixed pool of threads that reuse preallocated argon2 memory.
//!
//! Each argon2id hash needs its memory cost (19 MiB by default) of working blocks. Hashed on
//! Tokio's blocking pool, every new thread allocated its own copy and glibc kept it in that
//! thread's arena: a login flood grew the process by a hash per thread, to gigabytes. Here a
//! fixed number of workers (at most the core count by default) each own one block buffer for
//! the life of the process, and a bounded queue in front of them turns a flood into
//! RESOURCE_EXHAUSTED (the gateway's 429) instead of memory.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::oneshot;

use crate::error::ApiError;

/// Work for a hashing thread: runs with that thread's block buffer.
type Job = Box<dyn FnOnce(&mut [Block]) + Send>;

/// A cheap handle to the hashing pool; clones share it.
#[derive(Clone)]
pub struct HashPool {
    jobs: SyncSender<Job>,
    /// A well-formed hash no password matches: what an unknown account is checked against, so
    /// a refusal takes as long as for a wrong password.
    decoy: Arc<str>,
}

impl HashPool {
    /// Starts `workers` threads behind a queue of `queue` waiting jobs. The parameters are
    /// argon2's defaults (argon2id, m=19456 KiB, t=2, p=1), the cost every stored hash has.
    pub fn start(workers: usize, queue: usize) -> Result<Self, String> {
        if workers == 0 {
            return Err("--hash-workers must be at least 1".into());
        }
        let (jobs, rx) = mpsc::sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..workers {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || work(&rx))
                .map_err(|e| format!("cannot start a hashing thread: {e}"))?;
        }
        Ok(Self {
            jobs,
            decoy: decoy_hash().into(),
        })
    }

    /// The PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`) of `password`.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.run(move |blocks| {
            let salt = SaltString::generate(&mut OsRng);
            phc_hash(password.as_bytes(), &salt, blocks)
        })
        .await?
    }

    /// Whether `password` matches `stored` (a PHC string); `None` (no such account, or no
    /// password) costs the same work and never matches.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, ApiError> {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.decoy.to_string());
        self.run(move |blocks| {
            // The work first: a short-circuit here would answer unknown accounts at once.
            let matches = verify(password.as_bytes(), &stored, blocks);
            matches && known
        })
        .await
    }

    async fn run<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut [Block]) -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |blocks| {
            let _ = tx.send(f(blocks));
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ApiError::exhausted(
                    "too many sign-ins at once; try again in a moment",
                ))
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ApiError::internal("the hashing threads have stopped"))
            }
        }
        rx.await
            .map_err(|_| ApiError::internal("a hashing job was dropped"))
    }
}

/// A worker: takes jobs until the pool is dropped, always with the same buffer.
fn work(rx: &Mutex<Receiver<Job>>) {
    let mut blocks = vec![Block::new(); Params::DEFAULT.block_count()];
    loop {
        // The lock is held only while waiting for the next job (std's receiver is not shared).
        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(job) = next else { return };
        job(&mut blocks);
    }
}

fn phc_hash(password: &[u8], salt: &SaltString, blocks: &mut [Block]) -> Result<String, ApiError> {
    let params = Params::DEFAULT;
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt
        .decode_b64(&mut salt_buf)
        .map_err(|e| ApiError::internal(format!("argon2 salt: {e}")))?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password, salt_bytes, &mut out, blocks)
        .map_err(|e| ApiError::internal(format!("argon2: {e}")))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params)
            .map_err(|e| ApiError::internal(format!("argon2 params: {e}")))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| ApiError::internal(format!("argon2: {e}")))?),
    };
    Ok(phc.to_string())
}

/// Recomputes `stored`'s hash of `password` with its own parameters, in `blocks` when they
/// are large enough (stored hashes use the defaults) and in a one-off buffer otherwise.
fn verify(password: &[u8], stored: &str, blocks: &mut [Block]) -> bool {
    let Ok(phc) = PasswordHash::new(stored) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (phc.salt, phc.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (Algorithm::try_from(phc.algorithm), Params::try_from(&phc))
    else {
        return false;
    };
    let version = phc
        .version
        .and_then(|v| Version::try_from(v).ok())
        .unwrap_or_default();
    let mut salt_buf = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params.clone());
    let needed = params.block_count();
    let done = if needed <= blocks.len() {
        argon.hash_password_into_with_memory(password, salt_bytes, &mut out, &mut blocks[..needed])
    } else {
        argon.hash_password_into(password, salt_bytes, &mut out)
    };
    // `Output`'s equality is constant-time.
    done.is_ok() && Output::new(&out).is_ok_and(|computed| computed == expected)
}

/// A PHC string with the default parameters, a random salt and an output no password hashes
/// to in practice (all zeros).
fn decoy_hash() -> String {
    let salt = SaltString::generate(&mut OsRng);
    let params = ParamsString::try_from(&Params::DEFAULT).ok();
    let output = Output::new(&[0u8; Params::DEFAULT_OUTPUT_LEN]).ok();
    PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: params.unwrap_or_default(),
        salt: Some(salt.as_salt()),
        hash: output,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::PasswordVerifier;

    #[tokio::test]
    async fn pool_hashes_match_the_argon2_crate_and_a_full_queue_is_refused() {
        let pool = HashPool::start(1, 1).unwrap();
        let phc = pool.hash("correct horse".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        // Interchangeable with hashes the argon2 crate makes and checks itself.
        let parsed = PasswordHash::new(&phc).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        assert!(pool
            .verify("correct horse".into(), Some(phc.clone()))
            .await
            .unwrap());
        assert!(!pool.verify("wrong".into(), Some(phc)).await.unwrap());
        assert!(!pool.verify("anything".into(), None).await.unwrap());

        // One running, one waiting: the third is refused at once.
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.hash("x".repeat(8)).await })
            })
            .collect();
        let mut refused = 0;
        for c in calls {
            if let Err(e) = c.await.unwrap() {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted);
                refused += 1;
            }
        }
        assert!(refused >= 1, "a full queue took every job");
    }
}
