//! The context of one method call: who calls (user and access), when, and the helpers every
//! method needs — the stream tree, publishing a change once it is committed, storage errors in
//! Pryv's words.

use std::sync::Arc;

use herald_model::access::Access;
use herald_model::change::{Change, ChangeKind, ChangeType, ChangedItem};
use herald_model::stream::Stream;

use crate::cache::UserStreams;
use herald_model::user::User;
use herald_model::{ApiError, ErrorId, Timestamp};
use herald_storage::StoreError;

use crate::App;

pub struct Context {
    pub app: Arc<App>,
    pub user: Arc<User>,
    pub access: Access,
    /// When the request started: the stamp of everything it writes.
    pub now: Timestamp,
    pub clock: crate::RequestClock,
    /// Set when the request did not catch up with the change log before trusting the caches
    /// (see [`Context::authenticate_deferring`]): the log position they are known good up to. Its
    /// write must then be checked against it in its own transaction.
    pub fresh_since: Option<u64>,
}

/// Storage failures as API errors. Conflicts are mapped by each method (it knows the resource).
pub fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::new(ErrorId::UnknownResource, "The resource no longer exists."),
        other => ApiError::unexpected(other),
    }
}

impl Context {
    /// Resolve the token of a request to its access, as Pryv does (spec 5.2).
    pub async fn authenticate(app: Arc<App>, clock: crate::RequestClock, username: &str, token: Option<&str>) -> Result<Context, ApiError> {
        Self::authenticate_deferring(app, clock, username, token, false).await
    }

    /// [`Context::authenticate`]; with `defer` and a shared store, without first catching up
    /// with the change log (a round trip per request, serialised): the context then carries the
    /// log position its caches are good up to (`fresh_since`), and the method must check it in
    /// the transaction of its only write (`Store::insert_event_fresh`), and start over with a
    /// catch-up when that, or any check made from the caches, fails. Only `events.create` does.
    pub async fn authenticate_deferring(
        app: Arc<App>,
        clock: crate::RequestClock,
        username: &str,
        token: Option<&str>,
        defer: bool,
    ) -> Result<Context, ApiError> {
        let user = app.user(username).await?;
        let fresh_since = if defer && app.settings.shared_store {
            // Read before the caches: every record up to it has been applied to them.
            Some(app.log_seen.load(std::sync::atomic::Ordering::Acquire))
        } else {
            app.catch_up_with_log().await?;
            None
        };
        let token = token.filter(|t| !t.is_empty()).ok_or_else(|| {
            ApiError::new(
                ErrorId::MissingAccessToken,
                "The access token is missing: expected an \"Authorization\" header or an \"auth\" query string parameter.",
            )
        })?;
        let access = match app.cache.access(&user.id, token) {
            Some(a) => a,
            None => {
                let generation = app.cache.generation(&user.id);
                let a = app
                    .store
                    .access_by_token(&user.id, token)
                    .await
                    .map_err(store_error)?
                    .ok_or_else(|| ApiError::new(ErrorId::InvalidAccessToken, "Cannot find access from token."))?;
                app.cache.put_access(&user.id, generation, &a);
                a
            }
        };
        let now = clock.now;
        if access.is_expired(now) {
            return Err(ApiError::forbidden("Access has expired."));
        }
        // Loaded once per process: every event answer may need it for attachments' readTokens.
        app.read_token_secret().await?;
        Ok(Context { app, user, access, now, clock, fresh_since })
    }

    /// An event in its API form for this access: attachments carry their `readToken`.
    pub fn event_json(&self, e: &herald_model::event::Event) -> serde_json::Value {
        self.read_tokens().event_json(e)
    }

    /// What makes this access's read tokens (for answers written after the context is gone).
    pub fn read_tokens(&self) -> crate::methods::attachments::ReadTokens {
        crate::methods::attachments::ReadTokens::new(&self.app, &self.access)
    }

    /// Pryv's refusal of a method this kind of access may not call.
    pub fn forbid_unless(&self, allowed: bool, method: &str) -> Result<(), ApiError> {
        if allowed {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("You cannot access {method} resource using the given access")))
        }
    }

    pub fn author(&self) -> &str {
        &self.access.id
    }

    /// The user's live streams (trashed included) and their tree, from the cache when it has
    /// them: `events.create` needs the tree on every call.
    pub async fn tree(&self) -> Result<Arc<UserStreams>, ApiError> {
        if let Some(s) = self.app.cache.streams(&self.user.id) {
            return Ok(s);
        }
        let generation = self.app.cache.generation(&self.user.id);
        let streams = Arc::new(UserStreams::new(self.app.store.streams(&self.user.id).await.map_err(store_error)?));
        self.app.cache.put_streams(&self.user.id, generation, streams.clone());
        Ok(streams)
    }

    /// A copy of the user's live streams, for the methods that change or list them.
    pub async fn streams(&self) -> Result<Vec<Stream>, ApiError> {
        Ok(self.tree().await?.list.clone())
    }

    /// A change of this user, handed to the store with the write that makes it (the store logs
    /// it in the same transaction and gives it its `seq`).
    pub fn change(&self, kind: ChangeKind, change_type: ChangeType, items: Vec<ChangedItem>) -> Change {
        Change::new(&self.user.id, &self.user.username, kind, change_type, items)
    }

    /// Tell listeners about changes the store has committed and logged.
    pub fn announce(&self, logged: herald_storage::Changes) {
        for change in logged {
            self.app.publish(change);
        }
    }

    pub fn api_endpoint(&self, token: &str) -> String {
        self.app.api_endpoint(&self.user.username, Some(token))
    }
}
