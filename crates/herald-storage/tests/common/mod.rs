//! What the store tests share: a fresh PostgreSQL database per test (at
//! `HERALD_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`), and running a
//! test on each store.
#![allow(dead_code)]

use std::sync::Arc;

use herald_storage::postgres::PgStore;
use herald_storage::sqlite::{Durability, SqliteStore};
use herald_storage::Store;

pub fn admin_url() -> String {
    std::env::var("HERALD_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh PostgreSQL database for one test: (store, its name).
pub async fn pg_store() -> (Arc<dyn Store>, String) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!("herald_test_{}_{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    let (admin, conn) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await.expect("PostgreSQL for the tests");
    tokio::spawn(conn);
    admin.execute(&format!("CREATE DATABASE {name}"), &[]).await.unwrap();
    let url = format!("{}/{name}", admin_url().rsplit_once('/').unwrap().0);
    (Arc::new(PgStore::connect(&url).await.unwrap()), name)
}

pub async fn drop_db(name: &str) {
    let (admin, conn) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let _ = admin.execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"), &[]).await;
}

/// Whether the PostgreSQL server of the tests listens. Without it the PostgreSQL half of a test
/// is skipped with a line saying so, except under CI (`CI` set), where it must be there.
pub fn postgres_listening(test: &str) -> bool {
    let url = admin_url();
    let host_port = url.split("://").nth(1).unwrap_or("").rsplit('@').next().unwrap_or("").split('/').next().unwrap_or("").to_string();
    let addr = if host_port.contains(':') { host_port } else { format!("{host_port}:5432") };
    if std::net::TcpStream::connect(&addr).is_ok() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{test}: PostgreSQL not reachable at {url}");
    // Straight to stderr, past the test harness\'s capture: a skip must be seen.
    let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("SKIPPED {test} on PostgreSQL: not reachable at {url}\n"));
    false
}

/// Run `test` on a fresh SQLite store, then on a fresh PostgreSQL one.
pub async fn on_each_store<F, Fut>(test: F)
where
    F: Fn(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    test(Arc::new(SqliteStore::open(dir.path(), Durability::Normal).unwrap())).await;
    if !postgres_listening(std::thread::current().name().unwrap_or("this test")) {
        return;
    }
    let (store, name) = pg_store().await;
    test(store).await;
    drop_db(&name).await;
}
