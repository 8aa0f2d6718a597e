//! Memory of a real `im-backends` process under abuse (security issue, items 3 and 4): its
//! resident memory stays bounded while many users register and log in at once, a full hashing
//! queue answers RESOURCE_EXHAUSTED instead of queueing without end, and a `get_multi_file`
//! naming one large file twenty times reads it once.

use im_tests::backend_memory::{flood, multi_file, BackendProcess};

const EXE: &str = env!("CARGO_BIN_EXE_echo_backend");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_does_not_grow_the_backend_by_a_hash_per_thread() {
    let backend = BackendProcess::start(EXE, "user", &[]).await;
    let client = backend.client().await;
    // One user first, so the baseline includes what any hashing allocates once.
    assert_eq!(flood(&client, "warm", 1, 1).await, vec![Ok(())]);
    let before = backend.rss();
    let outcomes = flood(&client, "user", 48, 16).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let grown = backend.rss().saturating_sub(before);
    println!(
        "login flood: 48 users, 16 at a time: RSS grew by {} MiB",
        grown >> 20
    );
    assert!(
        grown < 120 << 20,
        "RSS grew by {} MiB during 48 registrations and logins (16 at a time)",
        grown >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hashing_queue_answers_resource_exhausted() {
    let backend =
        BackendProcess::start(EXE, "user", &["--hash-workers", "1", "--hash-queue", "1"]).await;
    let client = backend.client().await;
    let outcomes = flood(&client, "burst", 16, 16).await;
    let refused = outcomes
        .iter()
        .filter(|o| **o == Err(tonic::Code::ResourceExhausted))
        .count();
    let other: Vec<_> = outcomes
        .iter()
        .filter(|o| !matches!(o, Ok(()) | Err(tonic::Code::ResourceExhausted)))
        .collect();
    assert!(other.is_empty(), "{other:?}");
    assert!(
        refused > 0,
        "16 sign-ins at once fit a queue of 1: {outcomes:?}"
    );
    // Once the burst is over, sign-ins work again.
    assert_eq!(flood(&client, "after", 1, 1).await, vec![Ok(())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_copies_of_one_large_file_are_read_once() {
    let backend = BackendProcess::start(EXE, "file", &[]).await;
    let (before, after, code) = multi_file(&backend, 8 << 20, 20).await;
    let grown = after.saturating_sub(before);
    println!(
        "get_multi_file 20 x 8 MiB: peak RSS grew by {} MiB ({code:?})",
        grown >> 20
    );
    assert_eq!(
        code,
        tonic::Code::Ok,
        "one distinct 8 MiB file fits the 12 MiB reply"
    );
    assert!(
        grown < 80 << 20,
        "peak RSS grew by {} MiB answering one 8 MiB file asked for 20 times",
        grown >> 20
    );
}
