//! Where phone verification codes go. The default sender writes them to the log (a dev setup has
//! no SMS gateway); a deployment plugs in its provider by implementing [`SmsSender`].

use std::sync::Arc;

pub trait SmsSender: Send + Sync {
    fn send_code(&self, phone: &str, code: &str);
}

/// Logs `phone` and `code` at INFO: the dev default.
pub struct LogSms;

impl SmsSender for LogSms {
    fn send_code(&self, phone: &str, code: &str) {
        tracing::info!(phone, code, "verification code (log SMS sender)");
    }
}

pub type SharedSms = Arc<dyn SmsSender>;
