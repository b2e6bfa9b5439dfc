//! Accesses and their permissions: Pryv.io's rules of who may read, write and manage what.
//!
//! Levels are ordered `read < contribute = create-only < manage`, but `create-only` lets one
//! create events without reading any. A stream permission covers the stream's descendants; the
//! nearest ancestor with a permission wins, then the `*` permission (spec 5.3).

use serde_json::{json, Map, Value};

use crate::error::{ApiError, ApiResult, ErrorId};
use crate::stream::StreamTree;
use crate::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessType {
    Personal,
    App,
    Shared,
}

impl AccessType {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "personal" => Some(Self::Personal),
            "app" => Some(Self::App),
            "shared" => Some(Self::Shared),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Personal => "personal",
            Self::App => "app",
            Self::Shared => "shared",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Read,
    CreateOnly,
    Contribute,
    Manage,
}

impl Level {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Self::Read),
            "create-only" => Some(Self::CreateOnly),
            "contribute" => Some(Self::Contribute),
            "manage" => Some(Self::Manage),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::CreateOnly => "create-only",
            Self::Contribute => "contribute",
            Self::Manage => "manage",
        }
    }
    /// Pryv's numeric order: read 0, create-only = contribute 1, manage 2.
    pub fn rank(self) -> u8 {
        match self {
            Self::Read => 0,
            Self::CreateOnly | Self::Contribute => 1,
            Self::Manage => 2,
        }
    }
    pub fn can_read(self) -> bool {
        self != Self::CreateOnly
    }
    pub fn can_create_events(self) -> bool {
        self != Self::Read
    }
    pub fn can_update_events(self) -> bool {
        matches!(self, Self::Contribute | Self::Manage)
    }
    pub fn can_manage(self) -> bool {
        self == Self::Manage
    }
    /// May a holder of `self` grant `other` to an access it creates?
    pub fn can_grant(self, other: Level) -> bool {
        match (self, other) {
            (Self::CreateOnly, _) => false,
            (_, Self::CreateOnly) => self.rank() >= 1,
            _ => self.rank() >= other.rank(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Permission {
    Stream { stream_id: String, level: Level, default_name: Option<String> },
    Feature { feature: String, setting: String },
}

impl Permission {
    pub fn to_json(&self) -> Value {
        match self {
            Permission::Stream { stream_id, level, default_name } => {
                let mut v = json!({ "streamId": stream_id, "level": level.as_str() });
                if let Some(n) = default_name {
                    v["defaultName"] = json!(n);
                }
                v
            }
            Permission::Feature { feature, setting } => json!({ "feature": feature, "setting": setting }),
        }
    }

    /// Parse one permission as given to `accesses.create`.
    pub fn from_json(v: &Value) -> ApiResult<Self> {
        let o = v.as_object().ok_or_else(|| ApiError::param("permissions", "each permission must be an object"))?;
        if let Some(f) = o.get("feature") {
            let feature = f.as_str().ok_or_else(|| ApiError::param("permissions", "feature must be a string"))?;
            let setting = o
                .get("setting")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::param("permissions", "feature permissions need a string setting"))?;
            // Pryv.io's schema: the features it knows, each with the one setting it knows.
            if !FEATURES.contains(&feature) {
                return Err(ApiError::param("permissions", format!("Unknown feature \"{feature}\": expected selfRevoke or selfAudit.")));
            }
            if setting != "forbidden" {
                return Err(ApiError::param("permissions", format!("The setting of \"{feature}\" must be \"forbidden\".")));
            }
            return Ok(Permission::Feature { feature: feature.into(), setting: setting.into() });
        }
        let stream_id = o
            .get("streamId")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::param("permissions", "stream permissions need a string streamId"))?;
        let level = o
            .get("level")
            .and_then(Value::as_str)
            .and_then(Level::parse)
            .ok_or_else(|| ApiError::param("permissions", "level must be one of read, contribute, create-only, manage"))?;
        let default_name = o.get("defaultName").and_then(Value::as_str).map(str::to_owned);
        Ok(Permission::Stream { stream_id: stream_id.into(), level, default_name })
    }
}

/// The feature permissions of Pryv.io; `forbidden` is their only setting.
pub const FEATURES: &[&str] = &["selfRevoke", "selfAudit"];

#[derive(Debug, Clone, PartialEq)]
pub struct Access {
    pub id: String,
    pub token: String,
    pub access_type: AccessType,
    pub name: String,
    pub device_name: Option<String>,
    pub permissions: Vec<Permission>,
    pub expires: Option<Timestamp>,
    pub client_data: Option<Value>,
    pub created: Timestamp,
    pub created_by: String,
    pub modified: Timestamp,
    pub modified_by: String,
    pub deleted: Option<Timestamp>,
}

impl Access {
    pub fn is_personal(&self) -> bool {
        self.access_type == AccessType::Personal
    }

    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }

    /// The API form. `api_endpoint` is `http(s)://{token}@host/{username}/`.
    pub fn to_json(&self, api_endpoint: &str) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("token".into(), json!(self.token));
        m.insert("type".into(), json!(self.access_type.as_str()));
        m.insert("name".into(), json!(self.name));
        if let Some(d) = &self.device_name {
            m.insert("deviceName".into(), json!(d));
        }
        m.insert("permissions".into(), Value::Array(self.permissions.iter().map(Permission::to_json).collect()));
        m.insert("apiEndpoint".into(), json!(api_endpoint));
        if let Some(e) = self.expires {
            m.insert("expires".into(), json!(e));
        }
        if let Some(cd) = &self.client_data {
            m.insert("clientData".into(), cd.clone());
        }
        m.insert("created".into(), json!(self.created));
        m.insert("createdBy".into(), json!(self.created_by));
        m.insert("modified".into(), json!(self.modified));
        m.insert("modifiedBy".into(), json!(self.modified_by));
        if let Some(d) = self.deleted {
            m.insert("deleted".into(), json!(d));
        }
        Value::Object(m)
    }

    fn stream_permissions(&self) -> impl Iterator<Item = (&str, Level)> {
        self.permissions.iter().filter_map(|p| match p {
            Permission::Stream { stream_id, level, .. } => Some((stream_id.as_str(), *level)),
            _ => None,
        })
    }

    fn explicit_level(&self, stream_id: &str) -> Option<Level> {
        self.stream_permissions().filter(|(s, _)| *s == stream_id).map(|(_, l)| l).max_by_key(|l| l.rank())
    }

    /// The level this access has on a stream: the nearest ancestor's permission, else `*`'s.
    pub fn stream_level(&self, tree: &StreamTree, stream_id: &str) -> Option<Level> {
        if self.is_personal() {
            return Some(Level::Manage);
        }
        for s in tree.ancestry(stream_id) {
            if let Some(l) = self.explicit_level(&s) {
                return Some(l);
            }
        }
        self.explicit_level("*")
    }

    /// The level on the root of the tree (`*`), which governs root-stream creation.
    pub fn star_level(&self) -> Option<Level> {
        if self.is_personal() {
            Some(Level::Manage)
        } else {
            self.explicit_level("*")
        }
    }

    pub fn can_read_stream(&self, tree: &StreamTree, id: &str) -> bool {
        self.stream_level(tree, id).is_some_and(Level::can_read)
    }

    pub fn can_manage_stream(&self, tree: &StreamTree, id: &str) -> bool {
        self.stream_level(tree, id).is_some_and(Level::can_manage)
    }

    /// An event is readable when one of its streams is readable.
    pub fn can_read_event(&self, tree: &StreamTree, stream_ids: &[String]) -> bool {
        stream_ids.iter().any(|s| self.can_read_stream(tree, s))
    }

    /// Creating an event needs create-only, contribute or manage on every one of its streams.
    pub fn can_create_event(&self, tree: &StreamTree, stream_ids: &[String]) -> bool {
        stream_ids.iter().all(|s| self.stream_level(tree, s).is_some_and(Level::can_create_events))
    }

    /// Updating or deleting an event needs contribute or manage on every one of its streams.
    pub fn can_update_event(&self, tree: &StreamTree, stream_ids: &[String]) -> bool {
        stream_ids.iter().all(|s| self.stream_level(tree, s).is_some_and(Level::can_update_events))
    }

    pub fn feature_forbidden(&self, feature: &str) -> bool {
        self.permissions.iter().any(|p| matches!(p, Permission::Feature { feature: f, setting } if f == feature && setting == "forbidden"))
    }

    /// `accesses.get`, `accesses.create` and the like: not for shared accesses.
    pub fn can_manage_accesses(&self) -> bool {
        self.access_type != AccessType::Shared
    }

    /// Spec 5.4: may this access create `new`?
    pub fn check_can_create_access(&self, new: &Access, tree: &StreamTree) -> ApiResult<()> {
        match self.access_type {
            AccessType::Personal => Ok(()),
            AccessType::Shared => Err(ApiError::forbidden("A shared access cannot create accesses.")),
            AccessType::App => {
                if new.access_type != AccessType::Shared {
                    return Err(ApiError::forbidden("An app access can only create shared accesses."));
                }
                let mut any_stream = false;
                for p in &new.permissions {
                    if let Permission::Stream { stream_id, level, .. } = p {
                        any_stream = true;
                        let mine = if stream_id == "*" { self.star_level() } else { self.stream_level(tree, stream_id) };
                        if !mine.is_some_and(|m| m.can_grant(*level)) {
                            return Err(ApiError::forbidden(format!(
                                "The access cannot grant \"{}\" on stream \"{stream_id}\": it does not have that level itself.",
                                level.as_str()
                            )));
                        }
                    }
                }
                if !any_stream {
                    return Err(ApiError::forbidden("An app access can only create accesses with at least one stream permission."));
                }
                Ok(())
            }
        }
    }

    /// Spec 5.4: may this access delete `target`?
    pub fn check_can_delete_access(&self, target: &Access) -> ApiResult<()> {
        if self.is_personal() {
            return Ok(());
        }
        if target.id == self.id {
            if self.feature_forbidden("selfRevoke") {
                return Err(ApiError::forbidden("This access cannot revoke itself (selfRevoke is forbidden)."));
            }
            return Ok(());
        }
        if self.access_type == AccessType::App && target.created_by == self.id {
            return Ok(());
        }
        Err(ApiError::new(ErrorId::Forbidden, "The access may only delete itself or the accesses it created."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::Stream;

    fn st(id: &str, parent: Option<&str>) -> Stream {
        crate::stream::test_stream(id, parent)
    }

    fn access(t: AccessType, perms: &[(&str, Level)]) -> Access {
        Access {
            id: "acc".into(),
            token: "tok".into(),
            access_type: t,
            name: "n".into(),
            device_name: None,
            permissions: perms.iter().map(|(s, l)| Permission::Stream { stream_id: (*s).into(), level: *l, default_name: None }).collect(),
            expires: None,
            client_data: None,
            created: 0.0,
            created_by: "p".into(),
            modified: 0.0,
            modified_by: "p".into(),
            deleted: None,
        }
    }

    fn tree() -> StreamTree {
        StreamTree::new(&vec![st("health", None), st("heart", Some("health")), st("steps", Some("health")), st("diary", None)])
    }

    #[test]
    fn inheritance_nearest_ancestor_wins() {
        let t = tree();
        let a = access(AccessType::App, &[("health", Level::Read), ("steps", Level::Contribute)]);
        assert_eq!(a.stream_level(&t, "heart"), Some(Level::Read));
        assert_eq!(a.stream_level(&t, "steps"), Some(Level::Contribute));
        assert_eq!(a.stream_level(&t, "diary"), None);
        assert!(a.can_create_event(&t, &["steps".into()]));
        assert!(!a.can_create_event(&t, &["heart".into()]));
        assert!(!a.can_create_event(&t, &["steps".into(), "heart".into()]));
        assert!(a.can_read_event(&t, &["diary".into(), "heart".into()]));
    }

    #[test]
    fn star_applies_when_no_ancestor_matches() {
        let t = tree();
        let a = access(AccessType::Shared, &[("*", Level::Read), ("diary", Level::Manage)]);
        assert_eq!(a.stream_level(&t, "heart"), Some(Level::Read));
        assert!(a.can_manage_stream(&t, "diary"));
        assert!(!a.can_manage_stream(&t, "health"));
    }

    #[test]
    fn create_only_cannot_read_nor_update() {
        let t = tree();
        let a = access(AccessType::App, &[("diary", Level::CreateOnly)]);
        assert!(a.can_create_event(&t, &["diary".into()]));
        assert!(!a.can_read_stream(&t, "diary"));
        assert!(!a.can_update_event(&t, &["diary".into()]));
    }

    #[test]
    fn personal_can_everything() {
        let t = tree();
        let p = access(AccessType::Personal, &[]);
        assert!(p.can_manage_stream(&t, "heart"));
        assert_eq!(p.star_level(), Some(Level::Manage));
    }

    #[test]
    fn who_creates_which_access() {
        let t = tree();
        let app = access(AccessType::App, &[("health", Level::Contribute)]);
        let shared_ok = access(AccessType::Shared, &[("heart", Level::Read)]);
        assert!(app.check_can_create_access(&shared_ok, &t).is_ok());
        let too_much = access(AccessType::Shared, &[("heart", Level::Manage)]);
        assert!(app.check_can_create_access(&too_much, &t).is_err());
        let elsewhere = access(AccessType::Shared, &[("diary", Level::Read)]);
        assert!(app.check_can_create_access(&elsewhere, &t).is_err());
        let star = access(AccessType::Shared, &[("*", Level::Read)]);
        assert!(app.check_can_create_access(&star, &t).is_err());
        let app2 = access(AccessType::App, &[("heart", Level::Read)]);
        assert!(app.check_can_create_access(&app2, &t).is_err());
        let none = access(AccessType::Shared, &[]);
        assert!(app.check_can_create_access(&none, &t).is_err());
        let shared = access(AccessType::Shared, &[("*", Level::Manage)]);
        assert!(shared.check_can_create_access(&shared_ok, &t).is_err());
        let co = access(AccessType::App, &[("health", Level::CreateOnly)]);
        assert!(co.check_can_create_access(&access(AccessType::Shared, &[("heart", Level::CreateOnly)]), &t).is_err());
        assert!(app.check_can_create_access(&access(AccessType::Shared, &[("heart", Level::CreateOnly)]), &t).is_ok());
    }

    #[test]
    fn who_deletes_which_access() {
        let personal = access(AccessType::Personal, &[]);
        let mut app = access(AccessType::App, &[]);
        app.id = "app".into();
        let mut child = access(AccessType::Shared, &[]);
        child.id = "child".into();
        child.created_by = "app".into();
        let mut other = access(AccessType::Shared, &[]);
        other.id = "other".into();
        assert!(personal.check_can_delete_access(&app).is_ok());
        assert!(app.check_can_delete_access(&child).is_ok());
        assert!(app.check_can_delete_access(&app.clone()).is_ok());
        assert!(app.check_can_delete_access(&other).is_err());
        assert!(child.check_can_delete_access(&other).is_err());
        let mut locked = child.clone();
        locked.permissions.push(Permission::Feature { feature: "selfRevoke".into(), setting: "forbidden".into() });
        assert!(locked.check_can_delete_access(&locked.clone()).is_err());
    }
}
