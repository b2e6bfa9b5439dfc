//! The webhook delivery policy, in one place: what a webhook does when a change arrives, when a
//! POST succeeds or fails, when its timer fires, and when it is updated through the API.
//!
//! This is a pure state machine (time is passed in, in milliseconds): the delivery engine feeds
//! it and carries out the [`Step`] it returns (POST these messages, wake me at `t`, save this).
//!
//! The rules (spec 3.5-3.6, contract 3):
//! - A message joins `pending` (de-duplicated, in arrival order); an inactive webhook drops it.
//! - One POST at a time. The first POST goes at once; the next not before the last run plus
//!   `minIntervalMs`, so changes arriving meanwhile are bundled into one POST.
//! - A failure (no 2xx, status 0 when there was no answer) puts the messages back in front of
//!   `pending` and retries: the n-th retry waits `minIntervalMs × 2^(n−1)`, at most an hour.
//!   After 1 + `maxRetries` failed attempts in a row the webhook turns inactive.
//! - `410 Gone` turns it inactive at once; `429`/`503` with `Retry-After` delay the next attempt
//!   at least that long (at most an hour).
//! - Reactivation through the API resets `currentRetries` and delivers what is pending.

use crate::webhook::{Run, Webhook, WebhookState};

/// What every active webhook is sent when a dispatcher starts (before what was pending).
pub const BOOT_MESSAGE: &str = "webhooksServiceBoot";

/// Longest wait between two attempts (also the cap of `Retry-After`).
pub const MAX_DELAY_MS: f64 = 3_600_000.0;

/// The answer of one POST.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// HTTP status, or 0 when there was no response (connection error, timeout, blocked address).
    pub status: u16,
    /// `Retry-After` of a 429/503, in milliseconds.
    pub retry_after_ms: Option<u64>,
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// What the engine must save after a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Save {
    Nothing,
    /// `pending` changed.
    Pending,
    /// A run finished: counters, `lastRun`, `runs`, `state`, `pending` changed.
    Run(Run),
}

/// What the engine must do after feeding the machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// POST these messages now.
    pub send: Option<Vec<String>>,
    /// Call [`Machine::on_timer`] at this time (ms).
    pub wake_at: Option<f64>,
    pub save: Save,
}

impl Step {
    fn none() -> Self {
        Step { send: None, wake_at: None, save: Save::Nothing }
    }
}

/// Messages owed and messages being sent. Boxed in [`Machine`] and absent when both are empty,
/// which is how most webhooks spend their time.
#[derive(Debug, Clone, PartialEq, Default)]
struct Queue {
    pending: Vec<String>,
    in_flight: Option<Vec<String>>,
}

/// The delivery state of one webhook. Kept small (72 bytes): a node holds one per registered
/// webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    pub active: bool,
    pub current_retries: u32,
    pub max_retries: u32,
    pub min_interval_ms: u32,
    pub run_count: u64,
    pub fail_count: u64,
    pub last_run: Run,
    queue: Option<Box<Queue>>,
    /// Earliest next attempt asked by the receiver (`Retry-After`), ms.
    not_before_ms: f64,
    /// The wake-up already asked for (0 when none), so one timer at most is pending.
    wake_ms: f64,
}

impl Machine {
    pub fn new(w: &Webhook) -> Self {
        let queue = (!w.pending.is_empty()).then(|| Box::new(Queue { pending: w.pending.clone(), in_flight: None }));
        Machine {
            active: w.state == WebhookState::Active,
            run_count: w.run_count,
            fail_count: w.fail_count,
            current_retries: w.current_retries,
            max_retries: w.max_retries,
            min_interval_ms: w.min_interval_ms.min(u32::MAX as u64) as u32,
            last_run: w.last_run,
            queue,
            not_before_ms: 0.0,
            wake_ms: 0.0,
        }
    }

    /// Messages owed to the receiver, in order.
    pub fn pending(&self) -> &[String] {
        self.queue.as_ref().map(|q| q.pending.as_slice()).unwrap_or(&[])
    }

    /// What the receiver is still owed, as saved to storage: the messages of the POST in flight
    /// (not answered yet, so not delivered as far as anyone can tell), then `pending`. After a
    /// crash every one of them is sent again: at least once, never lost.
    pub fn owed(&self) -> Vec<String> {
        let Some(q) = self.queue.as_ref() else { return vec![] };
        let mut out = q.in_flight.clone().unwrap_or_default();
        for m in &q.pending {
            if !out.contains(m) {
                out.push(m.clone());
            }
        }
        out
    }

    fn queue(&mut self) -> &mut Queue {
        self.queue.get_or_insert_with(Box::default)
    }

    /// Drop the queue's box once it holds nothing.
    fn tidy(&mut self) {
        if self.queue.as_ref().is_some_and(|q| q.pending.is_empty() && q.in_flight.is_none()) {
            self.queue = None;
        }
    }

    pub fn state(&self) -> WebhookState {
        if self.active {
            WebhookState::Active
        } else {
            WebhookState::Inactive
        }
    }

    pub fn is_sending(&self) -> bool {
        self.in_flight().is_some()
    }

    /// The messages of the POST in flight (decided, maybe not started yet).
    pub fn in_flight(&self) -> Option<&[String]> {
        self.queue.as_ref()?.in_flight.as_deref()
    }

    /// How long after the last run the next attempt may start.
    pub fn delay_ms(&self) -> f64 {
        let min = self.min_interval_ms as f64;
        if self.current_retries == 0 {
            min
        } else {
            let exp = (self.current_retries - 1).min(40) as i32;
            (min * 2f64.powi(exp)).min(MAX_DELAY_MS)
        }
    }

    fn earliest_ms(&self) -> f64 {
        let after_last = if self.last_run.timestamp > 0.0 { self.last_run.timestamp * 1000.0 + self.delay_ms() } else { 0.0 };
        after_last.max(self.not_before_ms)
    }

    fn add(&mut self, msg: &str) -> bool {
        if self.pending().iter().any(|m| m == msg) {
            false
        } else {
            self.queue().pending.push(msg.to_string());
            true
        }
    }

    /// Send if allowed now, else make sure a wake-up is asked for.
    fn try_send(&mut self, now_ms: f64, save: Save) -> Step {
        let mut step = Step { save, ..Step::none() };
        if !self.active || self.is_sending() || self.pending().is_empty() {
            self.tidy();
            return step;
        }
        let at = self.earliest_ms();
        if now_ms >= at {
            let q = self.queue();
            let msgs = std::mem::take(&mut q.pending);
            q.in_flight = Some(msgs.clone());
            step.send = Some(msgs);
        } else if self.wake_ms == 0.0 || self.wake_ms > at {
            self.wake_ms = at;
            step.wake_at = Some(at);
        }
        step
    }

    /// A message for this webhook (a change name, a scope key, `webhooksServiceBoot`).
    pub fn on_message(&mut self, msg: &str, now_ms: f64) -> Step {
        self.on_messages(std::slice::from_ref(&msg), now_ms)
    }

    /// The dispatcher started: `webhooksServiceBoot` goes first, before whatever was pending.
    pub fn on_boot(&mut self, now_ms: f64) -> Step {
        if !self.active {
            return Step::none();
        }
        if !self.pending().iter().any(|m| m == BOOT_MESSAGE) {
            self.queue().pending.insert(0, BOOT_MESSAGE.to_string());
        }
        // Not saved: every start sends it anew.
        self.try_send(now_ms, Save::Nothing)
    }

    /// Another node of the cluster delivered this webhook until now (it stopped, or handed its
    /// partition over): what it still owed goes out without `webhooksServiceBoot`, since the
    /// change log leaves nothing missed to announce. The first POST repeats exactly the one
    /// that was in flight when nothing arrived during it, so it gets the same `webhook-id`.
    pub fn on_resume(&mut self, now_ms: f64) -> Step {
        if !self.active {
            return Step::none();
        }
        self.try_send(now_ms, Save::Nothing)
    }

    /// The number of the delivery being attempted: the runs before its first attempt. Retries
    /// of one delivery share it, and so does its repetition by another node after a failover
    /// (both counters are saved with each run), which is what makes `webhook-id` repeatable.
    pub fn delivery_number(&self) -> u64 {
        self.run_count.saturating_sub(self.current_retries as u64)
    }

    /// Messages of changes this webhook missed while no dispatcher ran (replayed from the change
    /// log at start-up): they join `pending` without sending, so that [`Machine::on_boot`]
    /// sends them in the same POST as `webhooksServiceBoot`.
    pub fn on_replayed<S: AsRef<str>>(&mut self, msgs: &[S]) -> Step {
        if !self.active {
            return Step::none();
        }
        let mut added = false;
        for m in msgs {
            added |= self.add(m.as_ref());
        }
        Step { save: if added { Save::Pending } else { Save::Nothing }, ..Step::none() }
    }

    /// Several messages of one change (e.g. the keys of every scope it matches): they go in
    /// the same POST.
    pub fn on_messages<S: AsRef<str>>(&mut self, msgs: &[S], now_ms: f64) -> Step {
        if !self.active {
            return Step::none();
        }
        let mut added = false;
        for m in msgs {
            added |= self.add(m.as_ref());
        }
        self.try_send(now_ms, if added { Save::Pending } else { Save::Nothing })
    }

    /// The POST started by the last `send` finished.
    pub fn on_result(&mut self, outcome: Outcome, now_ms: f64) -> Step {
        let sent = self.queue.as_mut().and_then(|q| q.in_flight.take()).unwrap_or_default();
        self.run_count += 1;
        let run = Run { status: outcome.status, timestamp: crate::round_ms(now_ms / 1000.0) };
        self.last_run = run;
        if outcome.is_success() {
            self.current_retries = 0;
            self.not_before_ms = 0.0;
        } else {
            self.fail_count += 1;
            self.current_retries += 1;
            // What failed goes first again; what arrived meanwhile follows, de-duplicated.
            let newer = std::mem::replace(&mut self.queue().pending, sent);
            for m in newer {
                self.add(&m);
            }
            if outcome.status == 410 || self.current_retries > self.max_retries {
                self.active = false;
            }
            if let (429 | 503, Some(ra)) = (outcome.status, outcome.retry_after_ms) {
                self.not_before_ms = now_ms + (ra as f64).min(MAX_DELAY_MS);
            }
        }
        self.try_send(now_ms, Save::Run(run))
    }

    /// A wake-up set for `at_ms` has come. It counts if it is not earlier than the one asked
    /// for (timers may round up); stale ones are ignored.
    pub fn on_timer(&mut self, at_ms: f64, now_ms: f64) -> Step {
        if self.wake_ms == 0.0 || self.wake_ms > at_ms {
            return Step::none();
        }
        self.wake_ms = 0.0;
        self.try_send(now_ms, Save::Nothing)
    }

    /// The webhook was updated through the API: state and scopes apply at once; activating
    /// resets the retries and delivers what is pending.
    pub fn on_update(&mut self, state: WebhookState, now_ms: f64) -> Step {
        let was_active = self.active;
        self.active = state == WebhookState::Active;
        if self.active && !was_active {
            self.current_retries = 0;
            self.not_before_ms = 0.0;
            self.wake_ms = 0.0;
        }
        self.try_send(now_ms, Save::Nothing)
    }
}

/// Put a run in front of `runs` (newest first), keeping at most `size` (spec 3.6).
pub fn push_run(runs: &mut Vec<Run>, run: Run, size: usize) {
    runs.insert(0, run);
    runs.truncate(size.max(1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::Webhook;

    #[test]
    fn machine_stays_small() {
        assert!(std::mem::size_of::<Machine>() <= 72, "{}", std::mem::size_of::<Machine>());
    }

    fn hook(min_interval_ms: u64, max_retries: u32) -> Machine {
        Machine::new(&Webhook::new("w".into(), "a", "http://x", min_interval_ms, max_retries, "s".into(), 0.0))
    }

    const OK: Outcome = Outcome { status: 200, retry_after_ms: None };
    const T0: f64 = 1_000_000.0;

    #[test]
    fn what_is_in_flight_stays_owed_until_answered() {
        let mut m = hook(100, 5);
        m.on_message("a", T0);
        assert_eq!(m.pending(), &[] as &[String]);
        assert_eq!(m.owed(), vec!["a".to_string()], "a POST in flight is not delivered yet");
        m.on_message("b", T0 + 1.0);
        m.on_message("a", T0 + 2.0);
        assert_eq!(m.owed(), vec!["a".to_string(), "b".to_string()]);
        m.on_result(OK, T0 + 5.0);
        assert_eq!(m.owed(), vec!["b".to_string(), "a".to_string()], "a change after the POST started is owed again");
    }

    #[test]
    fn replayed_messages_wait_for_the_boot_post() {
        let mut m = hook(100, 5);
        let s = m.on_replayed(&["eventsChanged", "eventsChanged", "streamsChanged"]);
        assert_eq!(s.send, None, "nothing goes before the greeting");
        assert_eq!(s.save, Save::Pending);
        let s = m.on_boot(T0);
        assert_eq!(s.send, Some(vec![BOOT_MESSAGE.to_string(), "eventsChanged".into(), "streamsChanged".into()]));
        let mut off = hook(100, 5);
        off.active = false;
        assert_eq!(off.on_replayed(&["x"]).save, Save::Nothing);
    }

    #[test]
    fn first_message_goes_at_once() {
        let mut m = hook(100, 5);
        let s = m.on_message("hi", T0);
        assert_eq!(s.send, Some(vec!["hi".to_string()]));
        assert_eq!(s.save, Save::Pending);
        let s = m.on_result(OK, T0 + 5.0);
        assert_eq!(s.send, None);
        assert!(matches!(s.save, Save::Run(Run { status: 200, .. })));
        assert_eq!((m.run_count, m.fail_count, m.current_retries), (1, 0, 0));
    }

    /// Spec [73TG]-[86OP]: hello, hello, hello2, hello3 → one POST, then one bundled POST.
    #[test]
    fn throttling_bundles_and_deduplicates() {
        let mut m = hook(100, 5);
        assert!(m.on_message("hello", T0).send.is_some());
        m.on_result(OK, T0);
        let mut wake = None;
        for msg in ["hello", "hello", "hello2", "hello3"] {
            let s = m.on_message(msg, T0 + 10.0);
            assert_eq!(s.send, None);
            wake = wake.or(s.wake_at);
        }
        assert_eq!(m.pending(), ["hello", "hello2", "hello3"]);
        let at = wake.expect("a wake-up");
        assert_eq!(at, T0 + 100.0);
        let s = m.on_timer(at, at);
        assert_eq!(s.send, Some(vec!["hello".into(), "hello2".into(), "hello3".into()]));
        m.on_result(OK, at + 1.0);
        assert!(m.pending().is_empty());
    }

    #[test]
    fn boot_goes_before_what_was_pending() {
        let mut w = Webhook::new("w".into(), "a", "http://x", 100, 5, "s".into(), 0.0);
        w.pending = vec!["eventsChanged".into()];
        let mut m = Machine::new(&w);
        let s = m.on_boot(T0);
        assert_eq!(s.send, Some(vec![BOOT_MESSAGE.to_string(), "eventsChanged".to_string()]));
        w.state = WebhookState::Inactive;
        assert_eq!(Machine::new(&w).on_boot(T0).send, None);
    }

    #[test]
    fn messages_of_one_change_share_a_post() {
        let mut m = hook(100, 5);
        let s = m.on_messages(&["diary", "weights"], T0);
        assert_eq!(s.send, Some(vec!["diary".to_string(), "weights".to_string()]));
    }

    /// Spec [SRDL]: messages arriving during a POST wait for it, then go in the next POST.
    #[test]
    fn one_request_in_flight() {
        let mut m = hook(50, 5);
        assert!(m.on_message("hi1", T0).send.is_some());
        let s = m.on_message("hi2", T0 + 100.0);
        assert_eq!((s.send.clone(), s.wake_at), (None, None));
        let s = m.on_result(OK, T0 + 500.0);
        assert_eq!(s.send, None);
        let at = s.wake_at.unwrap();
        assert_eq!(at, T0 + 550.0);
        assert_eq!(m.on_timer(at, at).send, Some(vec!["hi2".to_string()]));
    }

    /// Spec [768L]-[ODNM] with contract 3.2: 1 + maxRetries attempts, exponential delays, then inactive.
    #[test]
    fn retries_grow_exponentially_then_deactivate() {
        let mut m = hook(10, 5);
        let mut now = T0;
        assert!(m.on_message("hello", now).send.is_some());
        let mut delays = vec![];
        let mut attempts = 1;
        loop {
            now += 1.0;
            let s = m.on_result(Outcome { status: 400, retry_after_ms: None }, now);
            if !m.active {
                assert!(s.wake_at.is_none() && s.send.is_none());
                break;
            }
            let at = s.wake_at.unwrap();
            delays.push(at - now);
            now = at;
            assert_eq!(m.on_timer(at, now).send, Some(vec!["hello".to_string()]));
            attempts += 1;
        }
        assert_eq!(attempts, 6);
        assert_eq!(delays, vec![10.0, 20.0, 40.0, 80.0, 160.0]);
        assert_eq!((m.run_count, m.fail_count, m.current_retries), (6, 6, 6));
        // Inactive: further messages are dropped.
        let s = m.on_message("again", now + 1000.0);
        assert_eq!(s, Step { send: None, wake_at: None, save: Save::Nothing });
    }

    /// Spec [E5VQ]-[1VIT]: the retry carries the failed message again, then all is clear.
    #[test]
    fn retry_resends_and_merges_newer_messages() {
        let mut m = hook(100, 5);
        m.on_message("hello", T0);
        let s = m.on_result(Outcome { status: 503, retry_after_ms: None }, T0 + 1.0);
        assert_eq!(m.current_retries, 1);
        let at = s.wake_at.unwrap();
        m.on_message("eventsChanged", T0 + 20.0);
        m.on_message("hello", T0 + 30.0);
        let s = m.on_timer(at, at);
        assert_eq!(s.send, Some(vec!["hello".to_string(), "eventsChanged".to_string()]));
        m.on_result(Outcome { status: 201, retry_after_ms: None }, at + 1.0);
        assert_eq!(m.current_retries, 0);
        assert!(m.pending().is_empty());
    }

    #[test]
    fn gone_deactivates_at_once() {
        let mut m = hook(10, 5);
        m.on_message("x", T0);
        m.on_result(Outcome { status: 410, retry_after_ms: None }, T0);
        assert!(!m.active);
        assert_eq!(m.pending(), ["x"]);
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let mut m = hook(10, 5);
        m.on_message("x", T0);
        let s = m.on_result(Outcome { status: 429, retry_after_ms: Some(5_000) }, T0);
        assert_eq!(s.wake_at, Some(T0 + 5_000.0));
        let s = m.on_timer(T0 + 5_000.0, T0 + 5_000.0);
        assert!(s.send.is_some());
        let s = m.on_result(Outcome { status: 503, retry_after_ms: Some(100_000_000) }, T0 + 6_000.0);
        assert_eq!(s.wake_at, Some(T0 + 6_000.0 + MAX_DELAY_MS));
    }

    #[test]
    fn reactivation_resets_retries_and_flushes_pending() {
        let mut m = hook(10, 0);
        m.on_message("x", T0);
        m.on_result(Outcome { status: 500, retry_after_ms: None }, T0);
        assert!(!m.active);
        let s = m.on_update(WebhookState::Active, T0 + 5.0);
        assert_eq!(m.current_retries, 0);
        // Last run was 5 ms ago and the interval is 10 ms: the flush is scheduled.
        let at = s.wake_at.unwrap();
        assert_eq!(m.on_timer(at, at).send, Some(vec!["x".to_string()]));
    }

    #[test]
    fn deactivation_by_update_stops_delivery() {
        let mut m = hook(10, 5);
        m.on_message("x", T0);
        m.on_result(OK, T0);
        m.on_update(WebhookState::Inactive, T0 + 1.0);
        assert_eq!(m.on_message("y", T0 + 100.0).send, None);
        assert!(m.pending().is_empty());
    }

    /// A stale wake-up (re-armed earlier since) does nothing.
    #[test]
    fn stale_timers_are_ignored() {
        let mut m = hook(100, 5);
        m.on_message("a", T0);
        m.on_result(OK, T0);
        let at = m.on_message("b", T0 + 1.0).wake_at.unwrap();
        assert_eq!(m.on_timer(at - 50.0, at).send, None);
        assert!(m.on_timer(at, at).send.is_some());
    }

    /// Spec [FYOR]: runs newest first, window of `size`.
    #[test]
    fn runs_rotate() {
        let mut runs = vec![];
        for i in 0..5 {
            push_run(&mut runs, Run { status: 200, timestamp: i as f64 }, 3);
        }
        assert_eq!(runs.iter().map(|r| r.timestamp).collect::<Vec<_>>(), vec![4.0, 3.0, 2.0]);
    }
}
