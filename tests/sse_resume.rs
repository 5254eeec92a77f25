//! The event stream resumes with no gap and no duplicate, even across a restart, and a
//! slow consumer catches up from the log.

mod common;

use common::*;
use std::time::Duration;

fn versions(events: &[SseEvent]) -> Vec<i64> {
    events.iter().map(SseEvent::version).collect()
}

fn ids(events: &[SseEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.data["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn resume_with_last_event_id_has_no_gap_and_no_duplicate(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let mut sse = Sse::connect(&server.base, "", None).await;
    for i in 0..3 {
        add_todo(&server, &todo_id(&format!("t{i}")), "x").await;
    }
    let first = sse.take(3).await;
    drop(sse);
    // Written while disconnected.
    for i in 3..6 {
        add_todo(&server, &todo_id(&format!("t{i}")), "x").await;
    }
    let last = first[1].id.clone(); // resume mid-way: t2 must come again, once
    let mut resumed = Sse::connect(&server.base, "", Some(&last)).await;
    let again = resumed.take(4).await;
    assert_eq!(ids(&again), ["t2", "t3", "t4", "t5"].map(todo_id));
    assert_eq!(again[0].version(), first[2].version());
    add_todo(&server, &todo_id("t6"), "x").await;
    assert_eq!(resumed.next().await.data["id"], todo_id("t6"));
    resumed.assert_quiet(Duration::from_millis(300)).await;

    // The query parameter does the same for a fresh EventSource.
    let mut by_query = Sse::connect(&server.base, &format!("?last_event_id={last}"), None).await;
    assert_eq!(
        ids(&by_query.take(5).await),
        ["t2", "t3", "t4", "t5", "t6"].map(todo_id)
    );
}
both!(resume_with_last_event_id_has_no_gap_and_no_duplicate);

async fn the_header_wins_over_a_stale_query_parameter(backend: Backend) {
    // A browser reconnecting by itself keeps its original URL but sends a newer header.
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let mut sse = Sse::connect(&server.base, "", None).await;
    for i in 0..3 {
        add_todo(&server, &todo_id(&format!("t{i}")), "x").await;
    }
    let events = sse.take(3).await;
    let mut resumed = Sse::connect(
        &server.base,
        &format!("?last_event_id={}", events[0].id),
        Some(&events[1].id),
    )
    .await;
    assert_eq!(ids(&resumed.take(1).await), ["t2"].map(todo_id));
    resumed.assert_quiet(Duration::from_millis(300)).await;
}
both!(the_header_wins_over_a_stale_query_parameter);

async fn resume_works_across_a_server_restart(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let mut sse = Sse::connect(&server.base, "", None).await;
    for i in 0..3 {
        add_todo(&server, &todo_id(&format!("t{i}")), "x").await;
    }
    let seen = sse.take(3).await;
    drop(sse);
    let pool = server.db.clone();
    drop(server);
    // While no server runs, another writer changes the data: the triggers live in the
    // database, so the log still records it.
    pool.execute(
        "UPDATE todos SET completed = true WHERE id = $1",
        args![todo_id("t1")],
    )
    .await;
    pool.close().await;

    let restarted = start(&db).await;
    add_todo(&restarted, &todo_id("t3"), "x").await;
    let mut resumed = Sse::connect(&restarted.base, "", Some(&seen[2].id)).await;
    let events = resumed.take(2).await;
    assert_eq!(ids(&events), ["t1", "t3"].map(todo_id));
    assert_eq!(events[0].data["action"], "update");
    assert!(events[0].version() > seen[2].version());
    assert!(versions(&events).windows(2).all(|w| w[0] < w[1]));
    resumed.assert_quiet(Duration::from_millis(300)).await;
}
both!(resume_works_across_a_server_restart);

async fn an_id_the_log_never_had_gets_a_reset(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    add_todo(&server, &todo_id("t0"), "x").await;
    let mut sse = Sse::connect(&server.base, "", Some("999")).await;
    let reset = sse.next().await;
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.data["reason"], "ahead_of_log");
    let head = server.engine.head().await.unwrap();
    assert_eq!(reset.version(), head);
    // After the reset the stream carries on live.
    add_todo(&server, &todo_id("t1"), "x").await;
    assert_eq!(sse.next().await.data["id"], todo_id("t1"));
}
both!(an_id_the_log_never_had_gets_a_reset);

async fn an_id_behind_the_compaction_horizon_gets_a_reset(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    for i in 0..3 {
        add_todo(&server, &todo_id(&format!("t{i}")), "x").await;
    }
    // What compaction records once it has collapsed versions up to 2.
    server
        .db
        .execute(
            "INSERT INTO _rhtmx_sync_meta (key, value) VALUES ('horizon', '2')",
            args![],
        )
        .await;
    let mut sse = Sse::connect(&server.base, "", Some("1")).await;
    let reset = sse.next().await;
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.data["reason"], "behind_horizon");
    // At the horizon itself nothing is missing.
    let mut ok = Sse::connect(&server.base, "", Some("2")).await;
    assert_eq!(ok.next().await.data["id"], todo_id("t2"));
}
both!(an_id_behind_the_compaction_horizon_gets_a_reset);

async fn the_entities_filter_keeps_other_entities_out_and_names_unknown_ones(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (server, pool) = start_with_notes(&db).await;
    let mut todos_only = Sse::connect(&server.base, "?entities=todos", None).await;
    let mut notes_only = Sse::connect(&server.base, "?entities=notes", None).await;
    pool.execute("INSERT INTO notes (id, body) VALUES (7, 'n')", args![])
        .await;
    add_todo(&server, &todo_id("t0"), "x").await;
    let todo = todos_only.next().await;
    assert_eq!(todo.data["entity"], "todos");
    let note = notes_only.next().await;
    assert_eq!(note.data["entity"], "notes");
    assert_eq!(note.data["id"], 7, "integer keys travel as numbers");
    notes_only.assert_quiet(Duration::from_millis(200)).await;

    // A typo in one name leaves the others live, and the stream says which it lacks.
    let mut mixed = Sse::connect(&server.base, "?entities=todos,nope", None).await;
    let warning = mixed.next().await;
    assert_eq!(warning.event, "warning");
    assert_eq!(
        warning.data["unknown_entities"],
        serde_json::json!(["nope"])
    );
    add_todo(&server, &todo_id("t1"), "y").await;
    assert_eq!(mixed.next().await.data["id"], todo_id("t1"));
    // Only unknown names: nothing to stream.
    assert_eq!(
        get_status(&format!("{}/api/sync/events?entities=nope", server.base)).await,
        404
    );
    assert_eq!(
        get_status(&format!(
            "{}/api/sync/events?last_event_id=abc",
            server.base
        ))
        .await,
        400
    );
}
both!(the_entities_filter_keeps_other_entities_out_and_names_unknown_ones);

async fn a_stalled_consumer_blocks_no_writer_and_misses_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    // A tiny channel, so the stream is certain to fall behind it.
    let server = start_with(&db, |b| b.event_buffer(2)).await;
    let mut sse = Sse::connect(&server.base, "", None).await;
    // Nobody reads the stream while 600 writes of 4 KiB each go through (more than
    // socket buffers hold), some as one big transaction so the channel overflows.
    let title = "x".repeat(4096);
    let insert = "INSERT INTO todos (id, title) VALUES ($1, $2)";
    server
        .db
        .execute_each(
            insert,
            (0..300).map(|i| args![format!("b{i:04}"), title.as_str()]),
        )
        .await;
    for i in 300..600 {
        server
            .db
            .execute(insert, args![format!("b{i:04}"), title.as_str()])
            .await;
    }
    let events = sse.take(600).await;
    let expected: Vec<String> = (0..600).map(|i| format!("b{i:04}")).collect();
    assert_eq!(ids(&events), expected);
    assert!(versions(&events).windows(2).all(|w| w[0] < w[1]));
    sse.assert_quiet(Duration::from_millis(300)).await;
}
both!(a_stalled_consumer_blocks_no_writer_and_misses_nothing);

async fn the_stream_suggests_a_retry_delay(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, |b| b.sse_retry(Duration::from_millis(1500))).await;
    let mut res = client()
        .get(format!("{}/api/sync/events", server.base))
        .send()
        .await
        .unwrap();
    let chunk = res.chunk().await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&chunk);
    assert!(text.contains("retry: 1500"), "first bytes: {text:?}");
}
both!(the_stream_suggests_a_retry_delay);
