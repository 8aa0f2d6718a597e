//! The demo web client in a real browser: headless Chromium (Debian's package) driven by
//! playwright-core walks the whole chat flow as two users against the whole system
//! (`tests/browser/chat.mjs`). `scripts/bootstrap.sh` installs Chromium, Node.js and the package.

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
    let run = tokio::process::Command::new("node")
        .arg("chat.mjs")
        .arg("--url")
        .arg(format!("http://{}", sys.gw.edge))
        .arg("--shots")
        .arg(&shots)
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
