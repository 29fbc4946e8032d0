use super::*;
use std::sync::Arc;
use tokio::io::AsyncReadExt as _;

fn id(n: i64) -> RequestId {
    RequestId::Number(n)
}

#[test]
fn the_id_of_a_response_is_found_at_the_top_level_only() {
    let cases: [(&str, Option<RequestId>); 7] = [
        (
            r#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"text":"AAAA"#,
            Some(id(7)),
        ),
        (
            r#"{"jsonrpc":"2.0","id":"abc","error":{"code":1"#,
            Some(RequestId::String("abc".into())),
        ),
        // The id after a (cut) result cannot be seen.
        (
            r#"{"jsonrpc":"2.0","result":{"content":[{"text":"AAAA"#,
            None,
        ),
        // An `id` inside the result is not the response's.
        (r#"{"result":{"id":9,"text":"AAAA"#, None),
        // Requests and notifications of the server are not answers.
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"elicitation/create","params":{"x":"AAAA"#,
            None,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"x":"AAAA"#,
            None,
        ),
        (
            r#"{ "jsonrpc" : "2.0" , "id" : 12 , "result" : { "a\"id\":1" : "AAAA"#,
            Some(id(12)),
        ),
    ];
    for (prefix, want) in cases {
        assert_eq!(response_id(prefix.as_bytes()), want, "{prefix}");
    }
}

async fn read_all(input: &[u8], max: usize) -> (String, Arc<Oversized>) {
    let oversized = Arc::new(Oversized::default());
    let mut lines = BoundedLines::new(input, max, oversized.clone());
    let mut out = Vec::new();
    // Small reads, as a codec would make.
    let mut buf = [0u8; 7];
    loop {
        let n = lines.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    (String::from_utf8(out).unwrap_or_default(), oversized)
}

#[tokio::test]
async fn an_oversized_answer_is_replaced_by_an_error_for_its_request_and_the_next_line_passes() {
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{{\"text\":\"{}\"}}}}\n",
        "A".repeat(300_000)
    );
    let next = "{\"jsonrpc\":\"2.0\",\"id\":6,\"result\":{}}\n";
    let input = format!("{big}{next}");
    let (out, oversized) = read_all(input.as_bytes(), 100_000).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out:.300}");
    let first: serde_json::Value =
        serde_json::from_str(lines.first().copied().unwrap_or_default()).unwrap_or_default();
    assert_eq!(first["id"], 5);
    assert!(
        first["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_result_bytes")),
        "{first}"
    );
    assert_eq!(lines.get(1).copied(), Some(next.trim_end()));
    assert!(oversized.take(&id(5)));
    assert!(!oversized.take(&id(5)), "taken once");
    assert!(!oversized.take(&id(6)));
}

#[tokio::test]
async fn lines_within_the_bound_pass_unchanged() {
    let line = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":\"{}\"}}\n",
        "B".repeat(1000)
    );
    let input = format!("{line}{line}last-without-newline");
    let (out, oversized) = read_all(input.as_bytes(), line.len()).await;
    assert_eq!(out, input);
    assert!(!oversized.take(&id(1)));
}

#[tokio::test]
async fn an_oversized_message_that_answers_nothing_ends_the_stream() {
    let input = format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{{\"data\":\"{}\"}}}}\n{{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{{}}}}\n",
        "C".repeat(5000)
    );
    let (out, oversized) = read_all(input.as_bytes(), 1000).await;
    assert_eq!(
        out, "",
        "nothing after the unattributable line is passed on"
    );
    assert!(
        oversized.take(&id(2)),
        "every call on the closed connection is too large"
    );
}

#[tokio::test]
async fn a_line_that_is_not_json_after_the_first_json_line_ends_the_stream() {
    let answer = "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n";
    let input = format!("{answer}\n<html>Bad Gateway</html>\n{answer}");
    let (out, oversized) = read_all(input.as_bytes(), 100_000).await;
    assert_eq!(
        out,
        format!("{answer}\n"),
        "the garbage and what follows it are not passed on"
    );
    assert!(
        !oversized.take(&id(1)),
        "garbage is not reported as an oversized answer"
    );
}

#[tokio::test]
async fn a_banner_before_the_first_json_line_is_passed_on() {
    let answer = "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n";
    let input = format!("demo server v1 starting\n{answer}{answer}");
    let (out, _) = read_all(input.as_bytes(), 100_000).await;
    assert_eq!(out, input, "rmcp skips the banner; nothing is cut");
}

#[test]
fn ids_remembered_are_bounded() {
    let o = Oversized::default();
    let remembered = i64::try_from(REMEMBERED).unwrap_or(i64::MAX);
    for n in 0..remembered + 10 {
        o.mark(id(n));
    }
    assert!(!o.take(&id(0)), "the oldest was forgotten");
    assert!(o.take(&id(remembered + 9)));
    assert!(o.ids.lock().map(|ids| ids.len()).unwrap_or(0) < REMEMBERED);
}
