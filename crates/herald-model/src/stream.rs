//! Streams: the folders that events live in. A stream tree decides permission inheritance and
//! what a query on a stream id covers (the stream and all its descendants).

use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};

use crate::Timestamp;

#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    pub id: String,
    pub name: String,
    pub parent_id: Option<String>,
    pub client_data: Option<Value>,
    pub trashed: bool,
    pub created: Timestamp,
    pub created_by: String,
    pub modified: Timestamp,
    pub modified_by: String,
}

impl Stream {
    /// The API form, without `children` (the tree builder adds them).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("name".into(), json!(self.name));
        m.insert("parentId".into(), json!(self.parent_id));
        if let Some(cd) = &self.client_data {
            m.insert("clientData".into(), cd.clone());
        }
        if self.trashed {
            m.insert("trashed".into(), json!(true));
        }
        m.insert("created".into(), json!(self.created));
        m.insert("createdBy".into(), json!(self.created_by));
        m.insert("modified".into(), json!(self.modified));
        m.insert("modifiedBy".into(), json!(self.modified_by));
        m
    }
}

/// The parent/child structure of a user's streams, built from the stream list.
#[derive(Debug, Default, Clone)]
pub struct StreamTree {
    parent: HashMap<String, Option<String>>,
    children: HashMap<String, Vec<String>>,
    trashed: HashSet<String>,
}

impl StreamTree {
    pub fn new<'a>(streams: impl IntoIterator<Item = &'a Stream>) -> Self {
        let mut t = StreamTree::default();
        for s in streams {
            t.parent.insert(s.id.clone(), s.parent_id.clone());
            if let Some(p) = &s.parent_id {
                t.children.entry(p.clone()).or_default().push(s.id.clone());
            }
            if s.trashed {
                t.trashed.insert(s.id.clone());
            }
        }
        t
    }

    pub fn contains(&self, id: &str) -> bool {
        self.parent.contains_key(id)
    }

    pub fn parent_of(&self, id: &str) -> Option<&str> {
        self.parent.get(id).and_then(|p| p.as_deref())
    }

    pub fn is_trashed(&self, id: &str) -> bool {
        self.trashed.contains(id)
    }

    /// `id`, then its parent, grand-parent... up to the root. Stops on a cycle.
    pub fn ancestry(&self, id: &str) -> Vec<String> {
        let mut out = vec![id.to_string()];
        let mut cur = id;
        while let Some(p) = self.parent_of(cur) {
            if out.iter().any(|x| x == p) {
                break;
            }
            out.push(p.to_string());
            cur = p;
        }
        out
    }

    /// `id` and all its descendants.
    pub fn expand(&self, id: &str) -> Vec<String> {
        let mut out = vec![id.to_string()];
        let mut seen: HashSet<&str> = HashSet::new();
        let mut i = 0;
        while i < out.len() {
            let cur = out[i].clone();
            if let Some(kids) = self.children.get(&cur) {
                for k in kids {
                    if seen.insert(k.as_str()) {
                        out.push(k.clone());
                    }
                }
            }
            i += 1;
        }
        out
    }

    pub fn ids(&self) -> impl Iterator<Item = &String> {
        self.parent.keys()
    }

    /// True when `candidate` is `id` or one of its descendants (moving a stream there would loop).
    pub fn is_descendant_or_self(&self, candidate: &str, id: &str) -> bool {
        self.ancestry(candidate).iter().any(|a| a == id)
    }
}

/// Build the nested API form (`children` arrays) of the given streams. Streams whose parent is
/// not in the set become roots of the output (as Pryv shows the accessible sub-trees of an app).
pub fn build_tree(streams: &[Stream]) -> Vec<Value> {
    let ids: HashSet<&str> = streams.iter().map(|s| s.id.as_str()).collect();
    let mut by_parent: HashMap<Option<&str>, Vec<&Stream>> = HashMap::new();
    for s in streams {
        let p = s.parent_id.as_deref().filter(|p| ids.contains(p));
        by_parent.entry(p).or_default().push(s);
    }
    fn build(parent: Option<&str>, by_parent: &HashMap<Option<&str>, Vec<&Stream>>, depth: usize) -> Vec<Value> {
        let Some(list) = by_parent.get(&parent) else { return vec![] };
        list.iter()
            .map(|s| {
                let mut m = s.to_json();
                let kids = if depth < 256 { build(Some(s.id.as_str()), by_parent, depth + 1) } else { vec![] };
                m.insert("children".into(), Value::Array(kids));
                Value::Object(m)
            })
            .collect()
    }
    build(None, &by_parent, 0)
}

/// A plain stream for unit tests across the model.
#[cfg(test)]
pub(crate) fn test_stream(id: &str, parent: Option<&str>) -> Stream {
    Stream {
        id: id.into(),
        name: id.into(),
        parent_id: parent.map(Into::into),
        client_data: None,
        trashed: false,
        created: 0.0,
        created_by: "x".into(),
        modified: 0.0,
        modified_by: "x".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(id: &str, parent: Option<&str>) -> Stream {
        test_stream(id, parent)
    }

    #[test]
    fn ancestry_and_expansion() {
        let list = vec![s("a", None), s("b", Some("a")), s("c", Some("b")), s("d", None)];
        let t = StreamTree::new(&list);
        assert_eq!(t.ancestry("c"), vec!["c", "b", "a"]);
        let mut e = t.expand("a");
        e.sort();
        assert_eq!(e, vec!["a", "b", "c"]);
        assert!(t.is_descendant_or_self("c", "a"));
        assert!(!t.is_descendant_or_self("d", "a"));
        let tree = build_tree(&list);
        assert_eq!(tree.len(), 2);
        let a = tree.iter().find(|v| v["id"] == "a").unwrap();
        assert_eq!(a["children"][0]["children"][0]["id"], "c");
    }

    #[test]
    fn subtree_roots_when_parent_hidden() {
        let list = vec![s("b", Some("a")), s("c", Some("b"))];
        let tree = build_tree(&list);
        assert_eq!(tree.len(), 1);
        assert_eq!(tree[0]["parentId"], "a");
    }
}
