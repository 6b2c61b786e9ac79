//! Progress on stderr and bounded waits.

use anyhow::{bail, Result};
use std::future::Future;
use std::time::{Duration, Instant};

/// One line of progress on stderr.
pub fn info(msg: impl std::fmt::Display) {
    eprintln!("[INFO] {msg}");
}

pub fn warn(msg: impl std::fmt::Display) {
    eprintln!("[WARN] {msg}");
}

/// The state a wait's check reports.
pub enum Wait<T> {
    Done(T),
    /// Not yet; the text says what is seen now (shown in the progress line).
    NotYet(String),
}

/// Polls `check` every `every` until it is done, printing progress on stderr
/// every few seconds; fails after `timeout` with what was last seen. `check`
/// may fail early (an error that waiting will not fix).
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Wait<T>>>,
{
    let start = Instant::now();
    let mut last_print = Instant::now();
    let mut last_seen = String::new();
    info(format!("Waiting for {what} (up to {}s)", timeout.as_secs()));
    loop {
        let remaining = timeout.saturating_sub(start.elapsed());
        let attempt = tokio::time::timeout(remaining.max(Duration::from_millis(1)), check()).await;
        match attempt {
            Ok(Ok(Wait::Done(v))) => {
                info(format!(
                    "Done waiting for {what} ({:.1}s)",
                    start.elapsed().as_secs_f32()
                ));
                return Ok(v);
            }
            Ok(Ok(Wait::NotYet(seen))) => last_seen = seen,
            Ok(Err(e)) => return Err(e),
            Err(_) => {}
        }
        if start.elapsed() >= timeout {
            let seen = if last_seen.is_empty() {
                String::new()
            } else {
                format!(" (last seen: {last_seen})")
            };
            bail!(
                "timed out after {}s waiting for {what}{seen}",
                timeout.as_secs()
            );
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            let seen = if last_seen.is_empty() {
                String::new()
            } else {
                format!(": {last_seen}")
            };
            info(format!(
                "  still waiting for {what} ({}s){seen}",
                start.elapsed().as_secs()
            ));
        }
        tokio::time::sleep(every.min(timeout.saturating_sub(start.elapsed()))).await;
    }
}

/// Formats seconds as a short age ("3s", "2m5s").
pub fn age(secs: u64) -> String {
    if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else {
        format!("{}h{}m", secs / 3600, (secs % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_and_times_out() {
        let mut n = 0;
        let v = wait_for(
            "thing",
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                n += 1;
                let done = n >= 3;
                async move {
                    Ok(if done {
                        Wait::Done(n)
                    } else {
                        Wait::NotYet("no".into())
                    })
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(v, 3);
        let e = wait_for::<(), _, _>(
            "never",
            Duration::from_millis(50),
            Duration::from_millis(5),
            || async { Ok(Wait::NotYet("pending".into())) },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("timed out") && e.contains("pending"), "{e}");
        assert_eq!(age(125), "2m5s");
    }
}
