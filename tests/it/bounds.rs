//! What a hostile or broken gateway can make the server repeat: huge request strings in
//! metrics and logs, and bursts of bad calls in the log.

use std::time::Duration;

use prost::Message;
use tonic::Code;
use tyk_dispatcher::pb;

use crate::helpers::*;

/// Longest log line (in bytes) the tests below accept.
const LINE_BOUND: usize = 8 * 1024;

fn cut(c: &str, full: usize) -> String {
    format!("{}…[cut, {full} bytes]", c.repeat(256))
}

#[tokio::test]
async fn distinct_huge_hook_names_leave_metrics_small_and_count_as_other() {
    let app = spawn_app(config_with(|_| {})).await;
    let channel = app.channel().await;
    for i in 0..300 {
        let mut object = seed_object();
        object.hook_name = format!("{i:03}{}", "h".repeat(64 * 1024 - 3));
        let request = object.encode_to_vec();
        let reply = call_raw(channel.clone(), DISPATCH, request.clone())
            .await
            .unwrap();
        assert!(reply == request.as_slice());
    }
    let (status, metrics) = http_get(app.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.len() < 200 * 1024,
        "/metrics is {} bytes",
        metrics.len()
    );
    assert!(
        metrics.contains(
            "tyk_dispatcher_dispatch_requests_total{hook_type=\"Pre\",hook_name=\"other\",outcome=\"unchanged\"} 300"
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("hhhh"), "no long name is a label value");
    app.shutdown().await;
}

#[tokio::test]
async fn a_huge_hook_name_makes_short_log_lines_that_name_its_length() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dispatcher.toml");
    // One declared hook, so an undeclared name is warned about too.
    std::fs::write(
        &config,
        "[[hooks]]\nname = \"Declared\"\ntype = \"Pre\"\n[[hooks.steps]]\nkind = \"set_headers\"\nheaders = { X-A = \"1\" }\n",
    )
    .unwrap();
    let process = Process::start(
        &[
            ("TYK_DISPATCHER_LISTEN", "127.0.0.1:0"),
            ("TYK_DISPATCHER_CONFIG", config.to_str().unwrap()),
            ("TYK_DISPATCHER_LOG_OBJECTS", "true"),
        ],
        &[],
    );
    let (grpc, _) = process.ready().await;
    let channel = connect(grpc[0].parse().unwrap()).await;
    const HUGE: usize = 4 << 20;
    let mut object = seed_object();
    object.hook_name = "n".repeat(HUGE);
    object.spec.insert("APIID".into(), "a".repeat(HUGE));
    call_raw(channel.clone(), DISPATCH, object.encode_to_vec())
        .await
        .unwrap();
    // A hook type the server does not know: the warning names the hook too.
    object.hook_type = 42;
    call_raw(channel.clone(), DISPATCH, object.encode_to_vec())
        .await
        .unwrap();
    let payload = serde_json::json!({
        "message": {"Type": "T".repeat(HUGE)},
        "handler_name": "x".repeat(HUGE),
        "spec": {"APIID": "a".repeat(HUGE)},
    })
    .to_string();
    call_raw(
        channel,
        DISPATCH_EVENT,
        pb::Event { payload }.encode_to_vec(),
    )
    .await
    .unwrap();
    process
        .wait_for_log("event payload", Duration::from_secs(10))
        .await;

    let dispatch = process
        .wait_for_log("dispatch", Duration::from_secs(5))
        .await;
    assert_eq!(dispatch["hook_name"], cut("n", HUGE));
    assert_eq!(dispatch["api_id"], cut("a", HUGE));
    let unknown = process
        .wait_for_log(
            "no hook declared for this name (warned once)",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(unknown["hook_name"], cut("n", HUGE));
    let unrecognised = process
        .wait_for_log(
            "unrecognised hook type: passed through unchanged",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(unrecognised["hook_name"], cut("n", HUGE));
    let event = process.wait_for_log("event", Duration::from_secs(5)).await;
    assert_eq!(event["event_type"], cut("T", HUGE));
    assert_eq!(event["handler_name"], cut("x", HUGE));
    assert_eq!(event["api_id"], cut("a", HUGE));
    assert_eq!(
        process.logs("object").len(),
        2,
        "both Objects logged, cut: {}",
        process.log_text().len()
    );

    let lines = process.lines.lock().unwrap().clone();
    for line in &lines {
        let text = line.to_string();
        assert!(
            text.len() < LINE_BOUND,
            "a {} byte line: {}…",
            text.len(),
            text.chars().take(200).collect::<String>()
        );
    }
}

#[tokio::test]
async fn a_burst_of_bad_calls_writes_a_handful_of_warnings_counting_the_rest() {
    let process = Process::start(&[("TYK_DISPATCHER_LISTEN", "127.0.0.1:0")], &[]);
    let (grpc, _) = process.ready().await;
    let channel = connect(grpc[0].parse().unwrap()).await;
    const BURST: usize = 1000;
    // Fifty at a time: a burst, within what one connection carries at once.
    for _ in 0..BURST / 50 {
        let calls = (0..50).map(|_| call_raw(channel.clone(), DISPATCH, vec![0xff; 12]));
        for result in futures_util::future::join_all(calls).await {
            let status = result.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        }
        let events = (0..50).map(|_| {
            call_raw(
                channel.clone(),
                DISPATCH_EVENT,
                pb::Event {
                    payload: "not json".into(),
                }
                .encode_to_vec(),
            )
        });
        for result in futures_util::future::join_all(events).await {
            assert!(result.unwrap().is_empty());
        }
    }
    // After the interval, one more of each is written with the count of those suppressed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    call_raw(channel.clone(), DISPATCH, vec![0xff; 12])
        .await
        .unwrap_err();
    call_raw(
        channel,
        DISPATCH_EVENT,
        pb::Event {
            payload: "not json".into(),
        }
        .encode_to_vec(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    for message in ["malformed Object refused", "event payload is not JSON"] {
        let lines = process.logs(message);
        assert!(
            (2..=12).contains(&lines.len()),
            "{message}: {} lines",
            lines.len()
        );
        assert!(lines.iter().all(|l| l["level"] == "WARN"));
        let suppressed: u64 = lines
            .iter()
            .map(|l| l["suppressed"].as_u64().expect("suppressed count"))
            .sum();
        assert_eq!(
            lines.len() as u64 + suppressed,
            BURST as u64 + 1,
            "{message}: every call is either written or counted"
        );
        assert!(
            lines.last().unwrap()["suppressed"].as_u64().unwrap() > 0,
            "{message}: the line after the burst says how many were suppressed"
        );
    }
}
