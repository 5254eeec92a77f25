//! Field clocks: what a survivor remembers of the entries compaction removed.
//!
//! Stored in the survivor's `clocks` column as a JSON object, one member per field:
//! `{"title": [12, "001732342200123-00000-9f86d081884c7d65", "client-a"], ...}` — the
//! version, effective HLC and client id (or `null`) of the field's last change at or
//! below the survivor. The merge reads them back as one entry per distinct version
//! ([`expand`]), so "which fields changed after the push's base, when, by whom" has the
//! same answer as before compaction. The member [`CREATED`] (not a field) holds the
//! clock of the row's latest creation, which reads back as a create: a create outlives
//! an older delete from another engine where an update would not.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The member of [`Clocks`] recording the row's latest creation; `$` keeps it apart
/// from column names.
pub(crate) const CREATED: &str = "$created";

/// `(version, hlc, client_id)` of a field's last change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Clock(pub i64, pub String, pub Option<String>);

/// Every field's [`Clock`], by field name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Clocks(pub BTreeMap<String, Clock>);

impl Clocks {
    /// Reads a `clocks` column; an unreadable one counts as empty (it can only make
    /// a late push's merge see fewer concurrent changes), with a warning.
    pub(crate) fn parse(json: &str) -> Clocks {
        serde_json::from_str(json).unwrap_or_else(|error| {
            tracing::warn!(%error, "a log entry's field clocks could not be read");
            Clocks::default()
        })
    }

    /// Folds in an older survivor's clocks (a row compacted twice).
    pub(crate) fn absorb(&mut self, older: Clocks) {
        for (field, clock) in older.0 {
            match self.0.get(&field) {
                Some(have) if have.0 >= clock.0 => {}
                _ => {
                    self.0.insert(field, clock);
                }
            }
        }
    }

    /// Records that the entry `clock` set `fields`.
    pub(crate) fn set<'a>(&mut self, fields: impl IntoIterator<Item = &'a str>, clock: &Clock) {
        for field in fields {
            self.0.insert(field.to_owned(), clock.clone());
        }
    }

    /// A delete: the row's earlier fields no longer matter (a create follows, setting
    /// all of them).
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("clocks always serialize")
    }
}

/// One removed change as the merge sees it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Past {
    pub version: i64,
    pub hlc: String,
    pub client_id: Option<String>,
    /// The fields whose last change it was.
    pub fields: Vec<String>,
    /// Whether it created the row (its [`CREATED`] clock).
    pub created: bool,
}

/// The changes below `version` (the survivor's own) that `clocks` remembers, oldest
/// first, one per version.
pub(crate) fn expand(clocks: &Clocks, version: i64) -> Vec<Past> {
    let mut by_version: BTreeMap<i64, Past> = BTreeMap::new();
    for (field, Clock(v, hlc, client)) in &clocks.0 {
        if *v >= version {
            continue;
        }
        let past = by_version.entry(*v).or_insert_with(|| Past {
            version: *v,
            hlc: hlc.clone(),
            client_id: client.clone(),
            fields: Vec::new(),
            created: false,
        });
        match field.as_str() {
            CREATED => past.created = true,
            _ => past.fields.push(field.clone()),
        }
    }
    by_version.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_keep_the_latest_change_of_each_field_and_expand_by_version() {
        let mut clocks = Clocks::default();
        clocks.set(["title", "done"], &Clock(1, "h1".into(), None));
        clocks.set(["done"], &Clock(4, "h4".into(), Some("b".into())));
        let mut older = Clocks::default();
        older.set(["title", "note"], &Clock(0, "h0".into(), None));
        clocks.absorb(older);
        let json = clocks.to_json();
        assert_eq!(
            json,
            r#"{"done":[4,"h4","b"],"note":[0,"h0",null],"title":[1,"h1",null]}"#
        );
        let back = Clocks::parse(&json);
        assert_eq!(back, clocks);
        let past = |version, hlc: &str, field: &str, created| Past {
            version,
            hlc: hlc.into(),
            client_id: None,
            fields: vec![field.into()],
            created,
        };
        assert_eq!(
            expand(&back, 4),
            vec![past(0, "h0", "note", false), past(1, "h1", "title", false)]
        );
        assert_eq!(expand(&back, 9).len(), 3);
        clocks.set([CREATED], &Clock(1, "h1".into(), None));
        assert_eq!(
            expand(&clocks, 4),
            vec![past(0, "h0", "note", false), past(1, "h1", "title", true)]
        );
        assert_eq!(Clocks::parse("not json"), Clocks::default());
    }
}
