//! The step bookkeeping, free of I/O: which event counts how many steps on which UTC day, the
//! totals per day, and which days were already notified.
//!
//! Keeping every event's contribution (id → day, steps) is what makes updates and deletions
//! cheap and exact: a changed event first takes its old contribution back, then adds the new one.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

/// The event type that is counted.
pub const STEPS_TYPE: &str = "count/steps";

const SECONDS_PER_DAY: f64 = 86_400.0;

/// Days since 1970-01-01 (UTC) of a Unix time in seconds.
pub fn day_number(unix_secs: f64) -> i64 {
    (unix_secs / SECONDS_PER_DAY).floor() as i64
}

/// `YYYY-MM-DD` of a day number (proleptic Gregorian calendar, H. Hinnant's algorithm).
pub fn date_of_day(day: i64) -> String {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DD` (UTC) of a Unix time in seconds.
pub fn utc_date(unix_secs: f64) -> String {
    date_of_day(day_number(unix_secs))
}

/// The step count of an event's `content`: a number (rounded), anything else counts nothing.
fn steps_of(content: Option<&Value>) -> Option<i64> {
    let c = content?;
    c.as_i64().or_else(|| c.as_f64().filter(|f| f.is_finite()).map(|f| f.round() as i64))
}

#[derive(Debug, Default, Clone)]
pub struct Tracker {
    /// Event id → (day, steps).
    events: HashMap<String, (i64, i64)>,
    /// Day → (total steps, number of events).
    totals: BTreeMap<i64, (i64, usize)>,
    notified: BTreeSet<i64>,
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// Set the contribution of event `id`: `steps` on the day of `time`.
    pub fn upsert(&mut self, id: &str, time: f64, steps: i64) {
        self.remove(id);
        let day = day_number(time);
        self.events.insert(id.to_string(), (day, steps));
        let t = self.totals.entry(day).or_insert((0, 0));
        t.0 += steps;
        t.1 += 1;
    }

    /// Take event `id`'s contribution back (no-op for an unknown id).
    pub fn remove(&mut self, id: &str) {
        if let Some((day, steps)) = self.events.remove(id) {
            if let Some(t) = self.totals.get_mut(&day) {
                t.0 -= steps;
                t.1 -= 1;
                if t.1 == 0 {
                    self.totals.remove(&day);
                }
            }
        }
    }

    /// Apply one event object from `events.get`: trashed events, events of another type and
    /// events without a numeric `content` or `time` count nothing.
    pub fn apply_event(&mut self, event: &Value) {
        let Some(id) = event["id"].as_str() else { return };
        let counted = !event["trashed"].as_bool().unwrap_or(false) && event["type"].as_str() == Some(STEPS_TYPE);
        let time = event["time"].as_f64().filter(|t| t.is_finite());
        match (counted, time, steps_of(event.get("content"))) {
            (true, Some(time), Some(steps)) => self.upsert(id, time, steps),
            _ => self.remove(id),
        }
    }

    /// Apply one item of `eventDeletions`.
    pub fn apply_deletion(&mut self, deletion: &Value) {
        if let Some(id) = deletion["id"].as_str() {
            self.remove(id);
        }
    }

    pub fn total(&self, day: i64) -> i64 {
        self.totals.get(&day).map_or(0, |t| t.0)
    }

    /// Totals per day, keyed by `YYYY-MM-DD`.
    pub fn totals_by_date(&self) -> BTreeMap<String, i64> {
        self.totals.iter().map(|(d, t)| (date_of_day(*d), t.0)).collect()
    }

    pub fn event_count(&self) -> usize {
        self.events.len()
    }

    /// Days at or over `threshold` that were not notified yet: (day, total).
    pub fn due(&self, threshold: i64) -> Vec<(i64, i64)> {
        self.totals.iter().filter(|(d, t)| t.0 >= threshold && !self.notified.contains(d)).map(|(d, t)| (*d, t.0)).collect()
    }

    /// Remember that `day` was notified; it never is again.
    pub fn mark_notified(&mut self, day: i64) {
        self.notified.insert(day);
    }

    /// Mark the days before `today` that are already at or over `threshold` as notified: used
    /// on the first sync, so that starting the service does not announce the whole history.
    pub fn mark_past_days_notified(&mut self, threshold: i64, today: i64) {
        let past: Vec<i64> = self.due(threshold).into_iter().map(|(d, _)| d).filter(|d| *d < today).collect();
        self.notified.extend(past);
    }

    pub fn is_notified(&self, day: i64) -> bool {
        self.notified.contains(&day)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DAY: f64 = 86_400.0;
    // 2024-03-01T00:00:00Z
    const MARCH_1: f64 = 1_709_251_200.0;

    fn ev(id: &str, time: f64, content: Value) -> Value {
        json!({"id": id, "type": "count/steps", "time": time, "content": content, "streamIds": ["activity"]})
    }

    #[test]
    fn dates() {
        assert_eq!(utc_date(0.0), "1970-01-01");
        assert_eq!(utc_date(-1.0), "1969-12-31");
        assert_eq!(utc_date(MARCH_1), "2024-03-01");
        assert_eq!(utc_date(MARCH_1 - 0.001), "2024-02-29");
        assert_eq!(utc_date(MARCH_1 + DAY - 0.001), "2024-03-01");
        assert_eq!(utc_date(951_782_400.0), "2000-02-29");
        assert_eq!(utc_date(4_107_542_400.0), "2100-03-01");
        assert_eq!(utc_date(1_735_689_599.0), "2024-12-31");
        assert_eq!(utc_date(1_735_689_600.0), "2025-01-01");
    }

    #[test]
    fn steps_are_summed_per_utc_day() {
        let mut t = Tracker::new();
        t.apply_event(&ev("a", MARCH_1 + 10.0, json!(4000)));
        t.apply_event(&ev("b", MARCH_1 + DAY - 1.0, json!(3000)));
        t.apply_event(&ev("c", MARCH_1 + DAY, json!(2500)));
        t.apply_event(&ev("d", MARCH_1 - 1.0, json!(100.4)));
        let want: BTreeMap<String, i64> =
            [("2024-02-29".into(), 100), ("2024-03-01".into(), 7000), ("2024-03-02".into(), 2500)].into_iter().collect();
        assert_eq!(t.totals_by_date(), want);
        assert_eq!(t.event_count(), 4);
    }

    #[test]
    fn updates_replace_and_deletions_remove() {
        let mut t = Tracker::new();
        let day = day_number(MARCH_1);
        t.apply_event(&ev("a", MARCH_1, json!(4000)));
        t.apply_event(&ev("b", MARCH_1, json!(3000)));
        // Seen again unchanged (an overlapping sync): counted once.
        t.apply_event(&ev("a", MARCH_1, json!(4000)));
        assert_eq!(t.total(day), 7000);
        // New content.
        t.apply_event(&ev("a", MARCH_1, json!(500)));
        assert_eq!(t.total(day), 3500);
        // Moved to the next day.
        t.apply_event(&ev("b", MARCH_1 + DAY, json!(3000)));
        assert_eq!((t.total(day), t.total(day + 1)), (500, 3000));
        // Trashed.
        let mut trashed = ev("a", MARCH_1, json!(500));
        trashed["trashed"] = json!(true);
        t.apply_event(&trashed);
        assert_eq!(t.total(day), 0);
        assert!(!t.totals_by_date().contains_key("2024-03-01"));
        // Untrashed.
        t.apply_event(&ev("a", MARCH_1, json!(500)));
        assert_eq!(t.total(day), 500);
        // Deleted (twice: deletions are re-read by overlapping syncs).
        t.apply_deletion(&json!({"id": "a", "deleted": MARCH_1}));
        t.apply_deletion(&json!({"id": "a", "deleted": MARCH_1}));
        assert_eq!(t.total(day), 0);
        // Content that is not a number, or another type, counts nothing.
        t.apply_event(&ev("b", MARCH_1 + DAY, json!("many")));
        assert_eq!(t.total(day + 1), 0);
        t.apply_event(&ev("c", MARCH_1, json!(10)));
        let mut other = ev("c", MARCH_1, json!(10));
        other["type"] = json!("count/generic");
        t.apply_event(&other);
        assert_eq!(t.event_count(), 0);
        assert!(t.totals_by_date().is_empty());
    }

    #[test]
    fn a_day_is_due_once() {
        let mut t = Tracker::new();
        let day = day_number(MARCH_1);
        t.apply_event(&ev("a", MARCH_1, json!(4000)));
        t.apply_event(&ev("b", MARCH_1, json!(3000)));
        t.apply_event(&ev("c", MARCH_1, json!(2500)));
        assert_eq!(t.due(10_000), vec![]);
        t.apply_event(&ev("d", MARCH_1, json!(1000)));
        assert_eq!(t.due(10_000), vec![(day, 10_500)]);
        t.mark_notified(day);
        assert_eq!(t.due(10_000), vec![]);
        // Falling below and crossing again does not notify again.
        t.remove("a");
        t.apply_event(&ev("a2", MARCH_1, json!(9000)));
        assert_eq!(t.due(10_000), vec![]);
        assert!(t.is_notified(day));
        // Exactly the threshold is enough.
        t.apply_event(&ev("e", MARCH_1 + DAY, json!(10_000)));
        assert_eq!(t.due(10_000), vec![(day + 1, 10_000)]);
    }

    #[test]
    fn history_is_not_announced_at_start() {
        let mut t = Tracker::new();
        let day = day_number(MARCH_1);
        t.apply_event(&ev("old", MARCH_1 - DAY, json!(20_000)));
        t.apply_event(&ev("today", MARCH_1, json!(20_000)));
        t.apply_event(&ev("tomorrow", MARCH_1 + DAY, json!(20_000)));
        t.mark_past_days_notified(10_000, day);
        assert_eq!(t.due(10_000), vec![(day, 20_000), (day + 1, 20_000)]);
    }
}
