//! Keeps the change log bounded: records that every consumer has passed, and that are older
//! than the retention, are deleted in the background, a bounded number per statement so that no
//! write waits long behind a trim.

use std::sync::Arc;
use std::time::Duration;

use crate::Store;

/// Records deleted per statement.
const TRIM_BATCH: usize = 20_000;

/// Trim the log every `every`, keeping records for `retention` after they were written (and,
/// whatever their age, until every consumer has passed them). Runs until the process ends.
pub fn spawn_log_trimmer(store: Arc<dyn Store>, retention: Duration, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let before = now.saturating_sub(retention).as_secs_f64();
            loop {
                match store.trim_change_log(before, TRIM_BATCH).await {
                    Ok(n) if n as usize >= TRIM_BATCH => tokio::task::yield_now().await,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "trimming the change log failed; trying again later");
                        break;
                    }
                }
            }
        }
    })
}
