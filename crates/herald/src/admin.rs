//! `herald admin`: what an operator does without calling the API as each user. It reads the
//! same settings as `serve` and works on the store directly.
//!
//! Webhook changes go through the change log like the API's, so a running server's dispatcher
//! applies them within half a second. A running server caches users and tokens: after
//! `users delete`, restart it (docs/operations.md).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use herald_model::change::{Change, ChangeKind, ChangeType, ChangedItem};
use herald_model::webhook::{Webhook, WebhookState};
use herald_storage::sqlite::SqliteStore;
use herald_storage::{Store, StoreError};

use crate::settings::Settings;
use crate::ServeArgs;

#[derive(Args)]
pub struct AdminArgs {
    #[command(flatten)]
    settings: ServeArgs,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// List, create or delete users.
    #[command(subcommand)]
    Users(UsersCommand),
    /// List webhooks with their state and failures; reactivate or delete one.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Write a consistent copy of the SQLite store into DIR (a data dir), while the server runs.
    Backup {
        /// Directory to write `herald.db` into; created if missing, must not hold one already.
        dir: PathBuf,
    },
    /// Replace the store by a backup taken with `herald admin backup` (stop the server first).
    Restore {
        /// A directory written by `herald admin backup`.
        dir: PathBuf,
        /// Replace a data dir that already holds a store.
        #[arg(long)]
        force: bool,
    },
    /// The change log: how far it goes, and how far each consumer has read.
    #[command(subcommand, name = "change-log")]
    ChangeLog(ChangeLogCommand),
}

#[derive(Subcommand)]
enum UsersCommand {
    /// One line per user: username, id, email, created.
    List,
    /// Create a user; the password is read from standard input (one line), never from a flag.
    Create {
        username: String,
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "en")]
        language: String,
    },
    /// Delete a user and everything of theirs: accesses, streams, events, webhooks.
    Delete { username: String },
}

#[derive(Subcommand)]
enum WebhooksCommand {
    /// One line per webhook: user, id, state, runs, failures, retries in a row, URL.
    List {
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
        /// Only those in this state (active or inactive).
        #[arg(long)]
        state: Option<String>,
    },
    /// Make an inactive webhook active again (its retry count starts over).
    Reactivate { username: String, id: String },
    /// Delete a webhook.
    Delete { username: String, id: String },
}

#[derive(Subcommand)]
enum ChangeLogCommand {
    /// Records kept, first and last numbers, and each consumer's cursor and lag.
    Status,
}

pub fn run(args: AdminArgs) -> Result<(), String> {
    let settings = crate::load_settings(&args.settings)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        match args.command {
            AdminCommand::Backup { dir } => backup(&settings, &dir),
            AdminCommand::Restore { dir, force } => restore(&settings, &dir, force),
            command => {
                let store = open_store(&settings).await?;
                match command {
                    AdminCommand::Users(c) => users(&settings, &*store, c).await,
                    AdminCommand::Webhooks(c) => webhooks(&*store, c).await,
                    AdminCommand::ChangeLog(ChangeLogCommand::Status) => {
                        change_log_status(&*store, crate::ops::log_consumers(sqlite_dir(&settings)?.is_none())).await
                    }
                    AdminCommand::Backup { .. } | AdminCommand::Restore { .. } => unreachable!("handled above"),
                }
            }
        }
    })
}

/// The SQLite file of these settings, or `None` on PostgreSQL.
fn sqlite_dir(settings: &Settings) -> Result<Option<PathBuf>, String> {
    match settings.database_url.as_deref() {
        None => Ok(Some(settings.data_dir.clone())),
        Some(url) if url.starts_with("sqlite:") => {
            Ok(Some(PathBuf::from(url.trim_start_matches("sqlite://").trim_start_matches("sqlite:"))))
        }
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => Ok(None),
        Some(other) => Err(format!("HERALD_DATABASE_URL \"{other}\": expected sqlite:PATH or postgres://USER@HOST:PORT/DB")),
    }
}

async fn open_store(settings: &Settings) -> Result<Arc<dyn Store>, String> {
    match sqlite_dir(settings)? {
        Some(dir) => {
            if !dir.join("herald.db").exists() {
                return Err(format!("no store in {} (HERALD_DATA_DIR)", dir.display()));
            }
            Ok(Arc::new(SqliteStore::open(&dir, settings.durability).map_err(|e| e.to_string())?))
        }
        None => {
            let url = settings.database_url.as_deref().unwrap_or_default();
            Ok(Arc::new(herald_storage::postgres::PgStore::connect(url).await.map_err(|e| e.to_string())?))
        }
    }
}

fn now() -> f64 {
    herald_api::now()
}

/// Every user, page by page.
async fn all_users(store: &dyn Store) -> Result<Vec<herald_model::user::User>, String> {
    let mut out = vec![];
    loop {
        let page =
            store.users_page(out.last().map(|u: &herald_model::user::User| u.username.as_str()), 1000).await.map_err(|e| e.to_string())?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
    }
}

async fn user(store: &dyn Store, username: &str) -> Result<herald_model::user::User, String> {
    store.user_by_name(username).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("no user \"{username}\""))
}

async fn users(settings: &Settings, store: &dyn Store, command: UsersCommand) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    match command {
        UsersCommand::List => {
            for u in all_users(store).await? {
                let _ = writeln!(out, "{}\t{}\t{}\t{}", u.username, u.id, u.email, u.created);
            }
        }
        UsersCommand::Create { username, email, language } => {
            if !herald_model::user::is_valid_username(&username) {
                return Err(format!("\"{username}\": a username is 5-60 lowercase letters, digits or '-', not at either end"));
            }
            let mut password = String::new();
            std::io::stdin().read_line(&mut password).map_err(|e| format!("cannot read the password: {e}"))?;
            let password = password.trim_end_matches(['\r', '\n']).to_string();
            if !(6..=100).contains(&password.chars().count()) {
                return Err("the password (standard input) must have 6 to 100 characters".into());
            }
            let a = &settings.api.auth;
            let pool = herald_api::hashing::HashPool::new(&herald_api::hashing::HashPoolSettings {
                threads: 1,
                queue: 1,
                nice: 0,
                argon2_memory_kib: a.argon2_memory_kib,
                argon2_iterations: a.argon2_iterations,
            });
            let password_hash = pool.hash(password).await.map_err(|e| e.message.clone())?;
            let u = herald_model::user::User {
                id: herald_model::id::new_id(),
                username: username.clone(),
                email,
                password_hash,
                language,
                created: now(),
            };
            store.create_user(&u).await.map_err(|e| match e {
                StoreError::Conflict { field } => format!("a user with this {field} exists already"),
                other => other.to_string(),
            })?;
            let _ = writeln!(out, "created {username} ({})", u.id);
        }
        UsersCommand::Delete { username } => {
            let u = user(store, &username).await?;
            // The webhooks' deletions go to the change log, so a running dispatcher drops them.
            let hooks = store.webhooks(&u.id, None).await.map_err(|e| e.to_string())?;
            let log = if hooks.is_empty() {
                vec![]
            } else {
                let items = hooks.iter().map(|w| ChangedItem::Webhook { id: w.id.clone(), active: None }).collect();
                vec![Change::new(&u.id, &u.username, ChangeKind::Webhooks, ChangeType::Delete, items)]
            };
            store.delete_user(&u.id, log).await.map_err(|e| e.to_string())?;
            let _ = writeln!(out, "deleted {username} ({}) and its {} webhook(s)", u.id, hooks.len());
        }
    }
    Ok(())
}

/// The URL as an operator may see it: without credentials in its user-info part.
fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "(invalid URL)".into(),
    }
}

async fn webhooks(store: &dyn Store, command: WebhooksCommand) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    match command {
        WebhooksCommand::List { user: only_user, state } => {
            let names: std::collections::HashMap<String, String> =
                all_users(store).await?.into_iter().map(|u| (u.id, u.username)).collect();
            let only_user = match only_user {
                Some(name) => Some(user(store, &name).await?.id),
                None => None,
            };
            let state = match state.as_deref() {
                None => None,
                Some(s) => Some(WebhookState::parse(s).ok_or_else(|| format!("--state {s}: expected active or inactive"))?),
            };
            let mut after = None;
            loop {
                let page = store.webhooks_page(after.clone(), 1000).await.map_err(|e| e.to_string())?;
                let Some((u, w)) = page.last() else { break };
                after = Some((u.clone(), w.id.clone()));
                for (user_id, w) in &page {
                    if only_user.as_ref().is_some_and(|o| o != user_id) || state.is_some_and(|s| s != w.state) {
                        continue;
                    }
                    let name = names.get(user_id).map_or("?", String::as_str);
                    let _ = writeln!(
                        out,
                        "{name}\t{}\t{}\truns={}\tfailures={}\tretries={}\t{}",
                        w.id,
                        w.state.as_str(),
                        w.run_count,
                        w.fail_count,
                        w.current_retries,
                        shown_url(&w.url)
                    );
                }
            }
        }
        WebhooksCommand::Reactivate { username, id } => {
            let u = user(store, &username).await?;
            let mut w: Webhook =
                store.webhook(&u.id, &id).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("no webhook {id} of {username}"))?;
            w.state = WebhookState::Active;
            w.current_retries = 0;
            w.modified = now();
            w.modified_by = "herald-admin".into();
            // The same change as webhooks.update's: the dispatcher applies the state in order.
            let item = ChangedItem::Webhook { id: w.id.clone(), active: Some(true) };
            let log = vec![Change::new(&u.id, &u.username, ChangeKind::Webhooks, ChangeType::Update, vec![item])];
            store.update_webhook(&u.id, &w, log).await.map_err(|e| e.to_string())?;
            let _ = writeln!(out, "reactivated {id}");
        }
        WebhooksCommand::Delete { username, id } => {
            let u = user(store, &username).await?;
            store.webhook(&u.id, &id).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("no webhook {id} of {username}"))?;
            let item = ChangedItem::Webhook { id: id.clone(), active: None };
            let log = vec![Change::new(&u.id, &u.username, ChangeKind::Webhooks, ChangeType::Delete, vec![item])];
            store.delete_webhook(&u.id, &id, now(), log).await.map_err(|e| e.to_string())?;
            let _ = writeln!(out, "deleted {id}");
        }
    }
    Ok(())
}

async fn change_log_status(store: &dyn Store, consumers: &[&str]) -> Result<(), String> {
    let stats = store.change_log_stats().await.map_err(|e| e.to_string())?;
    let last = store.last_seq().await.map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "records\t{}", stats.records);
    let _ = writeln!(out, "first\t{}", stats.first);
    let _ = writeln!(out, "last\t{last}");
    // One dispatcher alone; one per partition on PostgreSQL.
    for consumer in consumers {
        let cursor = store.log_cursor(consumer).await.map_err(|e| e.to_string())?;
        let _ = writeln!(out, "consumer {consumer}\tcursor={cursor}\tlag={}", last.saturating_sub(cursor));
    }
    Ok(())
}

fn backup(settings: &Settings, dest: &Path) -> Result<(), String> {
    let Some(dir) = sqlite_dir(settings)? else {
        return Err("the store is PostgreSQL: back it up with PostgreSQL's tools, e.g. \
                    `pg_dump --format=custom --file=herald.dump \"$HERALD_DATABASE_URL\"` (consistent while Herald runs), \
                    restored with `pg_restore --clean --if-exists --dbname=\"$HERALD_DATABASE_URL\" herald.dump` (docs/operations.md)"
            .into());
    };
    let pages = herald_storage::sqlite::backup(&dir.join("herald.db"), &dest.join("herald.db")).map_err(|e| e.to_string())?;
    println!("backed up {} into {} ({pages} pages)", dir.display(), dest.display());
    Ok(())
}

fn restore(settings: &Settings, src: &Path, force: bool) -> Result<(), String> {
    let Some(dir) = sqlite_dir(settings)? else {
        return Err("the store is PostgreSQL: restore it with `pg_restore` (docs/operations.md)".into());
    };
    herald_storage::sqlite::restore(&src.join("herald.db"), &dir.join("herald.db"), force).map_err(|e| e.to_string())?;
    println!("restored {} into {}", src.display(), dir.display());
    Ok(())
}
