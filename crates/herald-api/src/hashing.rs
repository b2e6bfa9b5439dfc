//! The password-hashing pool: the one way Herald hashes or verifies a password (registration,
//! login; password change and reset will come through it as well).
//!
//! Argon2 is built to be slow and to use memory, so it runs on a few dedicated threads (by
//! default half of the cores, at least one), never on Tokio's runtime or blocking pool: nothing
//! else the server does waits for these threads. A job waits in a short queue; when the threads
//! are busy and the queue is full, [`HashPool::run`] refuses at once ([`PoolError::Busy`]: the API answers
//! 503 with `Retry-After`) and that request is never run later. A queued job whose request has
//! gone (the client hung up) is skipped. On Linux the threads run at a lower priority (`nice`),
//! so that under a flood of guesses the rest of the server keeps the CPU first and hashing
//! takes what is left.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use herald_model::{ApiError, ErrorId};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// Why a job did not give its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolError {
    /// Every thread is busy and the queue is full: retry later.
    Busy,
    /// The job panicked, or no hashing thread could start.
    Failed,
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> ApiError {
        match e {
            PoolError::Busy => {
                ApiError::retry_later(ErrorId::ApiUnavailable, "The server is checking too many passwords at once; retry in a moment.", 1)
            }
            PoolError::Failed => ApiError::unexpected("the password could not be checked"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HashPoolSettings {
    /// Hashing threads; 0: half of the cores, at least one.
    pub threads: usize,
    /// Jobs that may wait for a thread.
    pub queue: usize,
    /// Niceness of the threads (Linux; 0 leaves them at the server's priority).
    pub nice: i32,
    /// Argon2id cost of new hashes: memory in KiB and iterations. Verifying uses the cost
    /// stored in the hash.
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
}

pub struct HashPool {
    jobs: mpsc::Sender<Job>,
    /// Jobs admitted and not finished (running or queued).
    admitted: Arc<AtomicUsize>,
    capacity: usize,
    threads: usize,
    memory_kib: u32,
    iterations: u32,
}

/// Gives back a job's place in the pool when the job ends, whether it ran, was skipped or
/// panicked.
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get() / 2).unwrap_or(1).max(1)
}

impl HashPool {
    pub fn new(s: &HashPoolSettings) -> HashPool {
        let threads = if s.threads == 0 { default_threads() } else { s.threads };
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let nice = s.nice;
            let spawned = std::thread::Builder::new().name(format!("herald-hash-{i}")).spawn(move || {
                lower_priority(nice);
                loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    match job {
                        // A panicking job must not take the thread with it.
                        Ok(job) => {
                            let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                        }
                        Err(_) => return,
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password-hashing thread");
            }
        }
        HashPool {
            jobs: tx,
            admitted: Arc::new(AtomicUsize::new(0)),
            capacity: threads + s.queue,
            threads,
            memory_kib: s.argon2_memory_kib.max(8),
            iterations: s.argon2_iterations.max(1),
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Run `f` on a hashing thread, or refuse at once when every thread is busy and the queue
    /// is full. If the caller stops waiting before `f` starts, `f` does not run.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, PoolError> {
        let admitted = self.admitted.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.capacity).then_some(n + 1));
        if admitted.is_err() {
            return Err(PoolError::Busy);
        }
        let place = Place(self.admitted.clone());
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            // Locals drop in reverse order, also when `f` panics: the place is given back before
            // the caller hears of the failure, so a caller retrying at once is not refused.
            let tx = tx;
            let place = place;
            if tx.is_closed() {
                drop(place);
                return;
            }
            let r = f();
            drop(place);
            let _ = tx.send(r);
        });
        // Sending fails only if no thread could start; the job (and its place) is dropped.
        self.jobs.send(job).map_err(|_| PoolError::Failed)?;
        rx.await.map_err(|_| PoolError::Failed)
    }

    /// A new Argon2id hash of `password`.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let (m, i) = (self.memory_kib, self.iterations);
        self.run(move || hash_password(&password, m, i)).await?
    }

    /// Whether `password` matches `hash`.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, ApiError> {
        Ok(self.run(move || verify_password(&password, &hash)).await?)
    }
}

fn hash_password(password: &str, memory_kib: u32, iterations: u32) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut OsRng);
    let params = argon2::Params::new(memory_kib, iterations, 1, None).map_err(ApiError::unexpected)?;
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(ApiError::unexpected)
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// Linux keeps a nice value per thread (setpriority(2), "BUGS"), so this lowers only the
/// calling hashing thread. Raising niceness needs no privilege.
#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) {
    if nice != 0 {
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), nice.clamp(-20, 19)) {
            tracing::warn!(error = %e, nice, "cannot lower the priority of a password-hashing thread");
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: i32) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(threads: usize, queue: usize) -> HashPoolSettings {
        HashPoolSettings { threads, queue, nice: 0, argon2_memory_kib: 1024, argon2_iterations: 1 }
    }

    #[tokio::test]
    async fn passwords_are_hashed_and_verified() {
        let pool = HashPool::new(&settings(1, 4));
        let h = pool.hash("secret-pw".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains("secret-pw"));
        assert!(pool.verify("secret-pw".into(), h.clone()).await.unwrap());
        assert!(!pool.verify("wrong".into(), h).await.unwrap());
        assert!(!pool.verify("x".into(), "not a hash".into()).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_pool_refuses_at_once_and_recovers() {
        let pool = Arc::new(HashPool::new(&settings(1, 1)));
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = oneshot::channel::<()>();
        // One job holds the thread, one waits in the queue.
        let running = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.run(move || {
                    let _ = started_tx.send(());
                    go_rx.recv().ok()
                })
                .await
            }
        });
        started_rx.await.unwrap();
        let queued = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(|| 2).await }
        });
        while pool.admitted.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.run(|| 3).await, Err(PoolError::Busy));
        let e = ApiError::from(PoolError::Busy);
        assert_eq!((e.status(), e.retry_after()), (503, Some(1)));
        go_tx.send(()).unwrap();
        assert_eq!(running.await.unwrap(), Ok(Some(())));
        assert_eq!(queued.await.unwrap(), Ok(2));
        assert_eq!(pool.run(|| 4).await, Ok(4));
        assert_eq!(pool.admitted.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_panicking_job_keeps_the_thread() {
        let pool = HashPool::new(&settings(1, 0));
        assert_eq!(pool.run(|| -> u8 { panic!("boom") }).await, Err(PoolError::Failed));
        assert_eq!(pool.run(|| 5).await, Ok(5));
    }
}
