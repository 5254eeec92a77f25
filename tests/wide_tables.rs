//! Tables wider than a function's argument limit (SQLite's, PostgreSQL's 100) are logged
//! whole, whatever their column names: the row JSON of such a table is built without
//! JSON paths. PostgreSQL takes at most 1600 columns per table.

mod common;

use common::*;
use serde_json::{json, Value};

/// Column names JSON paths give a meaning to, or that need escaping somewhere.
const ODD: [&str; 10] = [
    "a\"b",
    "c.d",
    "e[0]",
    "$f",
    "g h",
    "ñé€ 名",
    "back\\slash",
    "it's",
    "\"",
    "line\nbreak\ttab",
];

/// A 73-column table `wide` (integer key `id`): 60 plain columns `c00`..`c59`, then the
/// odd names, a BOOLEAN and a JSON column named oddly too, so every odd name lies past
/// the first 60 (the part that used to be added by path).
async fn create_wide(pool: &Db) -> Vec<String> {
    let mut names: Vec<String> = (0..60).map(|i| format!("c{i:02}")).collect();
    names.extend(ODD.iter().map(|s| s.to_string()));
    let mut defs: Vec<String> = names
        .iter()
        .map(|n| format!("\"{}\" TEXT", n.replace('"', "\"\"")))
        .collect();
    defs.push("\"flag.[0]\" BOOLEAN".into());
    defs.push("\"$.meta\" JSON".into());
    names.push("flag.[0]".into());
    names.push("$.meta".into());
    let ddl = format!(
        "CREATE TABLE wide (id INTEGER PRIMARY KEY, {})",
        defs.join(", ")
    );
    pool.execute(&ddl, args![]).await;
    assert_eq!(names.len() + 1, 73);
    names
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

async fn odd_column_names_past_the_argument_limit_are_logged(backend: Backend) {
    let db = TestDb::new(backend).await;
    let pool = db.connect().await;
    let names = create_wide(&pool).await;
    let server = start_with(&db, |b| b.entity_named("wide").writable("wide")).await;

    // A plain insert naming every column: it used to fail with "bad JSON path".
    let texts: Vec<&String> = names
        .iter()
        .filter(|n| !matches!(n.as_str(), "flag.[0]" | "$.meta"))
        .collect();
    let sql = format!(
        "INSERT INTO wide (id, {}, \"flag.[0]\", \"$.meta\") VALUES (1, {}, true, '{{\"k\":[1,2]}}')",
        texts.iter().map(|n| quote(n)).collect::<Vec<_>>().join(", "),
        (1..=texts.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let values = texts.iter().map(|n| Arg::from(format!("value of {n}")));
    pool.try_execute(&sql, values.collect())
        .await
        .expect("a write to a wide table");

    let (status, page) = pull(&server.base, "wide", "?since=0").await;
    assert_eq!(status, 200);
    let data = &page["changes"][0]["data"];
    let object = data.as_object().expect("row data is an object");
    assert_eq!(object.len(), 73, "every column is in the row: {data}");
    for n in &texts {
        assert_eq!(
            data[n.as_str()],
            json!(format!("value of {n}")),
            "column {n:?}"
        );
    }
    assert_eq!(data["flag.[0]"], json!(true));
    assert_eq!(data["$.meta"], json!({"k": [1, 2]}));
    assert_eq!(data["id"], json!(1));

    // An update of one odd column through the push API, then a plain-SQL update of
    // another: both logged with the whole row, `changed` naming the column.
    let (status, body) = push_raw(
        &server.base,
        "wide",
        json!({"changes": [{"id": 1, "action": "update", "data": {"a\"b": "pushed", "ñé€ 名": null}}]})
            .to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    pool.execute("UPDATE wide SET \"e[0]\" = 'plain' WHERE id = 1", args![])
        .await;
    let (_, page) = pull(&server.base, "wide", "?since=0").await;
    let changes = page["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 3);
    let pushed = &changes[1];
    assert_eq!(pushed["data"]["a\"b"], json!("pushed"));
    assert_eq!(pushed["data"]["ñé€ 名"], Value::Null);
    assert_eq!(pushed["data"].as_object().unwrap().len(), 73);
    let mut changed: Vec<String> = serde_json::from_value(pushed["changed"].clone()).unwrap();
    changed.sort();
    assert_eq!(changed, ["a\"b", "ñé€ 名"]);
    let plain = &changes[2];
    assert_eq!(plain["data"]["e[0]"], json!("plain"));
    assert_eq!(plain["data"]["a\"b"], json!("pushed"));
    assert_eq!(plain["changed"], json!(["e[0]"]));
}
both!(odd_column_names_past_the_argument_limit_are_logged);

async fn a_table_of_1500_columns_is_logged_whole(backend: Backend) {
    let db = TestDb::new(backend).await;
    let pool = db.connect().await;
    let cols: Vec<String> = (0..1500).map(|i| format!("\"x.{i}\" INTEGER")).collect();
    pool.execute(
        &format!(
            "CREATE TABLE huge (id INTEGER PRIMARY KEY, {})",
            cols.join(", ")
        ),
        args![],
    )
    .await;
    let server = start_with(&db, |b| b.entity_named("huge").writable("huge")).await;
    pool.try_execute("INSERT INTO huge (id, \"x.1499\") VALUES (7, 42)", args![])
        .await
        .expect("a write to a 1501-column table");
    let (_, page) = pull(&server.base, "huge", "?since=0").await;
    let data = &page["changes"][0]["data"];
    assert_eq!(data.as_object().unwrap().len(), 1501);
    assert_eq!(data["x.1499"], json!(42));
    assert_eq!(data["x.0"], Value::Null);
    pool.execute("UPDATE huge SET \"x.700\" = 1 WHERE id = 7", args![])
        .await;
    let (_, page) = pull(&server.base, "huge", "?since=0").await;
    assert_eq!(page["changes"][1]["changed"], json!(["x.700"]));
    assert_eq!(page["changes"][1]["data"]["x.700"], json!(1));
}
both!(a_table_of_1500_columns_is_logged_whole);
