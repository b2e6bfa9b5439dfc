//! The NATS bus against a real NATS server (`HERALD_TEST_NATS_URL`, default
//! `nats://127.0.0.1:4222`; CI and the development machines run one). Without it the test is
//! skipped with a line saying so, except under CI (`CI` set).

use std::time::Duration;

use herald_bus::nats::NatsBus;
use herald_bus::{ChangeBus, Received};
use herald_model::change::{Change, ChangeKind, ChangeType};

fn url() -> String {
    std::env::var("HERALD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn change(seq: u64) -> Change {
    Change { seq, ..Change::new("u1", "alice", ChangeKind::Events, ChangeType::Create, vec![]) }
}

/// Whether the NATS server answers; if not, `test` is skipped with a line saying so (a failure
/// under CI, where it must run).
fn nats_is_up(test: &str) -> bool {
    let addr = url().trim_start_matches("nats://").to_string();
    if std::net::TcpStream::connect(&addr).is_ok() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "NATS not reachable at {}", url());
    // Straight to stderr, past the test harness's capture: a skip must be seen.
    let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("SKIPPED {test}: NATS not reachable at {}\n", url()));
    false
}

/// Nothing but resync notices within 300 ms.
async fn quiet(sub: &mut Box<dyn herald_bus::Subscription>) -> bool {
    let fut = async {
        loop {
            match sub.recv().await {
                Some(Received::Lagged(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(300), fut).await.is_err()
}

async fn next_change(sub: &mut Box<dyn herald_bus::Subscription>) -> Option<u64> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), sub.recv()).await {
            Ok(Some(Received::Change(c))) => return Some(c.seq),
            Ok(Some(Received::Lagged(_))) => continue,
            _ => return None,
        }
    }
}

#[tokio::test]
async fn every_node_hears_every_change_once_and_other_clusters_hear_none() {
    if !nats_is_up("every_node_hears_every_change_once_and_other_clusters_hear_none") {
        return;
    }
    let ns = format!("test{}", std::process::id());
    let a = NatsBus::connect(&url(), &ns).await.unwrap();
    let b = NatsBus::connect(&url(), &ns).await.unwrap();
    let other = NatsBus::connect(&url(), &format!("{ns}other")).await.unwrap();
    let (mut on_a, mut on_b, mut on_other) = (a.subscribe(), b.subscribe(), other.subscribe());
    for seq in 1..=3 {
        a.publish(change(seq));
    }
    b.publish(change(4));
    // A node hears its own changes (in process) and the others' (from NATS), each once, and
    // each node's in the order it published them.
    let mut heard_a = vec![];
    let mut heard_b = vec![];
    for _ in 0..4 {
        heard_a.push(next_change(&mut on_a).await.unwrap());
        heard_b.push(next_change(&mut on_b).await.unwrap());
    }
    for heard in [&mut heard_a, &mut heard_b] {
        let from_a: Vec<u64> = heard.iter().copied().filter(|s| *s <= 3).collect();
        assert_eq!(from_a, vec![1, 2, 3]);
        heard.sort();
        assert_eq!(*heard, vec![1, 2, 3, 4]);
    }
    assert!(quiet(&mut on_a).await, "no echo: nothing twice");
    assert!(quiet(&mut on_other).await, "another namespace hears nothing");
}

/// Under load the publisher packs queued changes into one message (a JSON array): every change
/// still arrives once and in order, including past the most one message takes, and a gossip
/// note queued among them (another subject) neither breaks the order nor is lost.
#[tokio::test]
async fn a_burst_of_changes_arrives_whole_and_in_order() {
    if !nats_is_up("a_burst_of_changes_arrives_whole_and_in_order") {
        return;
    }
    use herald_bus::Gossip;
    let ns = format!("burst{}", std::process::id());
    let a = NatsBus::connect(&url(), &ns).await.unwrap();
    let b = NatsBus::connect(&url(), &ns).await.unwrap();
    let mut on_b = b.subscribe();
    let mut notes = b.listen("note");
    // Let the gossip subscription reach the server before anything is told.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for seq in 1..=150 {
        a.publish(change(seq));
    }
    a.tell("note", b"hello".to_vec());
    for seq in 151..=300 {
        a.publish(change(seq));
    }
    let mut heard = vec![];
    for _ in 0..300 {
        heard.push(next_change(&mut on_b).await.expect("every change arrives"));
    }
    assert_eq!(heard, (1..=300).collect::<Vec<u64>>());
    let note = tokio::time::timeout(Duration::from_secs(5), notes.recv()).await.expect("the note arrives");
    assert_eq!(note.as_deref(), Some(&b"hello"[..]));
    assert!(quiet(&mut on_b).await, "nothing twice");
}
