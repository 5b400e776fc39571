//! Status conditions as translate decides them (written back by the kube
//! source, printed in standalone mode).

use serde::Serialize;

use super::input::ParentRef;
use crate::store::ObjectKey;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Condition {
    pub fn yes(type_: &'static str, reason: &'static str, message: &str) -> Self {
        Self {
            type_,
            status: true,
            reason,
            message: message.into(),
        }
    }
    pub fn no(type_: &'static str, reason: &'static str, message: &str) -> Self {
        Self {
            type_,
            status: false,
            reason,
            message: message.into(),
        }
    }
}

/// The conditions of one object, or of one route parent / listener section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ObjectStatus {
    pub kind: &'static str,
    pub key: ObjectKey,
    /// For routes: the Gateway this entry is about.
    pub parent: Option<ObjectKey>,
    /// The listener (Gateway) or parentRef sectionName (route), if any.
    pub section: Option<String>,
    pub conditions: Vec<Condition>,
    /// `metadata.generation` of the object these conditions were decided for
    /// (`observedGeneration` of every condition).
    pub generation: i64,
    /// For routes: the parentRef this entry answers, defaults applied.
    pub parent_ref: Option<ParentRef>,
    /// For a listener's entry (kind Gateway or ListenerSet with a section).
    pub listener: Option<ListenerFacts>,
}

/// What a listener's status carries besides conditions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListenerFacts {
    /// Routes Accepted on this listener.
    pub attached_routes: i32,
    /// Route kinds (group gateway.networking.k8s.io) the listener accepts.
    pub supported_kinds: Vec<&'static str>,
}

impl ObjectStatus {
    pub fn new(kind: &'static str, key: ObjectKey) -> Self {
        Self {
            kind,
            key,
            parent: None,
            section: None,
            conditions: Vec::new(),
            generation: 0,
            parent_ref: None,
            listener: None,
        }
    }
    pub fn with(mut self, condition: Condition) -> Self {
        self.conditions.push(condition);
        self
    }
    pub fn push(&mut self, condition: Condition) {
        self.conditions.push(condition);
    }
    /// The first condition that is not True, if any: what an operator must look at.
    pub fn problem(&self) -> Option<&Condition> {
        self.conditions.iter().find(|c| !c.status)
    }
}
