use std::future::poll_fn;
use std::time::Duration;

use http_body::Body as _;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::ServiceExt;

use super::stream::split_words;
use super::*;

const SECOND: Duration = Duration::from_secs(1);

fn chat_body(model: &str) -> String {
    json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

fn chat(model: &str) -> Request<String> {
    Request::post("http://openrouter.test/api/v1/chat/completions")
        .header("content-type", "application/json")
        .body(chat_body(model))
        .unwrap()
}

/// The response head and the (unread) body of `reply` for model `m/x`.
async fn open(reply: Reply) -> (http::response::Parts, MockBody) {
    let up = MockUpstream::new().model("m/x", reply);
    up.oneshot(chat("m/x")).await.expect("no transport error").into_parts()
}

/// Reads one frame's bytes (`None` at the end of the body).
async fn next(body: &mut MockBody) -> Option<Result<Bytes, MockBodyError>> {
    let frame = body.frame().await?;
    Some(frame.map(|f| f.into_data().expect("only data frames")))
}

/// Reads frames until the end or an error, at most 100.
async fn frames(body: &mut MockBody) -> (Vec<Bytes>, Option<MockBodyError>) {
    let mut out = Vec::new();
    for _ in 0..100 {
        match next(body).await {
            Some(Ok(bytes)) => out.push(bytes),
            Some(Err(e)) => return (out, Some(e)),
            None => return (out, None),
        }
    }
    panic!("more than 100 frames")
}

/// Each frame holds exactly one SSE event; returns them in order.
fn one_each(frames: &[Bytes]) -> Vec<SseEvent> {
    frames
        .iter()
        .map(|f| {
            let mut events = parse_sse(f);
            assert_eq!(events.len(), 1, "one event per frame: {f:?}");
            events.remove(0)
        })
        .collect()
}

fn data(event: &SseEvent) -> Value {
    event
        .json()
        .unwrap_or_else(|| panic!("not a JSON data event: {event:?}"))
}

fn content(event: &SseEvent) -> Value {
    data(event)["choices"][0]["delta"]["content"].clone()
}

fn keep_alive() -> SseEvent {
    SseEvent::Comment("OPENROUTER PROCESSING".into())
}

// ===== in process =====

#[tokio::test]
async fn stream_sends_exact_openrouter_chunks() {
    let reply = Reply::stream()
        .tokens(["Hel", "lo \"x\""])
        .served_model("m/backup")
        .provider("Anthropic");
    let (head, mut body) = open(reply).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.headers[CONTENT_TYPE], "text/event-stream");
    assert_eq!(head.headers["cache-control"], "no-cache");
    assert_eq!(head.headers["x-generation-id"], "gen-mock-1");
    assert!(head.headers.get(CONTENT_LENGTH).is_none());
    assert!(!body.is_end_stream());

    let (frames, err) = frames(&mut body).await;
    assert!(err.is_none());
    assert!(body.is_end_stream());
    let created = data(&parse_sse(&frames[0])[0])["created"].as_u64().unwrap();
    assert!(created > 1_600_000_000);
    let prompt = (chat_body("m/x").len() / 4) as u64;
    let envelope = format!(
        r#""id":"gen-mock-1","provider":"Anthropic","model":"m/backup","object":"chat.completion.chunk","created":{created}"#
    );
    let expected = [
        format!(
            r#"data: {{{envelope},"choices":[{{"index":0,"delta":{{"role":"assistant","content":"Hel"}},"finish_reason":null,"native_finish_reason":null}}]}}"#
        ),
        format!(
            r#"data: {{{envelope},"choices":[{{"index":0,"delta":{{"role":"assistant","content":"lo \"x\""}},"finish_reason":null,"native_finish_reason":null}}]}}"#
        ),
        format!(
            r#"data: {{{envelope},"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop","native_finish_reason":"stop"}}]}}"#
        ),
        format!(
            r#"data: {{{envelope},"choices":[],"usage":{{"prompt_tokens":{prompt},"completion_tokens":2,"total_tokens":{}}}}}"#,
            prompt + 2
        ),
        "data: [DONE]".to_owned(),
    ];
    let frames: Vec<&str> = frames.iter().map(|f| std::str::from_utf8(f).unwrap()).collect();
    let expected: Vec<String> = expected.iter().map(|e| format!("{e}\n\n")).collect();
    assert_eq!(frames, expected);
}

#[tokio::test]
async fn default_tokens_are_the_words_of_the_content() {
    let (_, mut body) = open(Reply::stream()).await;
    let events = one_each(&frames(&mut body).await.0);
    let tokens: Vec<Value> = events[..3].iter().map(content).collect();
    assert_eq!(tokens, ["Hello", " from", " m/x"]);
    assert_eq!(data(&events[4])["usage"]["completion_tokens"], 3);

    let (_, mut body) = open(Reply::stream().served_model("a/b")).await;
    let events = one_each(&frames(&mut body).await.0);
    assert_eq!(content(&events[2]), " a/b");
    assert!(events.iter().filter_map(SseEvent::json).all(|v| v["model"] == "a/b"));

    let (_, mut body) = open(Reply::stream().content("pong  twice")).await;
    let events = one_each(&frames(&mut body).await.0);
    assert_eq!([content(&events[0]), content(&events[1])], ["pong", "  twice"]);

    // No tokens at all: straight to the finish.
    let (_, mut body) = open(Reply::stream().tokens(Vec::<String>::new())).await;
    let events = one_each(&frames(&mut body).await.0);
    assert_eq!(events.len(), 3);
    assert_eq!(data(&events[0])["choices"][0]["finish_reason"], "stop");
}

#[test]
fn split_words_keeps_the_spaces() {
    assert_eq!(split_words("Hello from x/y"), ["Hello", " from", " x/y"]);
    assert_eq!(split_words(" a  b "), [" a", "  b", " "]);
    assert_eq!(split_words("é\ntwo"), ["é", "\ntwo"]);
    assert!(split_words("").is_empty());
}

#[tokio::test]
async fn generation_ids_are_shared_by_the_chunks_of_one_stream() {
    let up = MockUpstream::new().model("m/x", Reply::stream());
    for n in 1..=2 {
        let mut body = up.clone().oneshot(chat("m/x")).await.unwrap().into_body();
        let events = one_each(&frames(&mut body).await.0);
        let ids: Vec<Value> = events
            .iter()
            .filter_map(SseEvent::json)
            .map(|v| v["id"].clone())
            .collect();
        assert_eq!(ids.len(), 5);
        assert!(ids.iter().all(|id| *id == format!("gen-mock-{n}")), "{ids:?}");
    }
}

#[tokio::test]
async fn stream_setters_are_ignored_elsewhere() {
    let (head, body) = open(Reply::ok().tokens(["a"]).cut_after(0).keep_alive(3, SECOND)).await;
    assert_eq!(head.headers[CONTENT_TYPE], "application/json");
    let v: Value = serde_json::from_slice(&body.collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from m/x");
}

#[tokio::test]
async fn error_before_first_token_follows_the_keep_alives() {
    let (_, mut body) = open(Reply::stream().keep_alive(2, Duration::ZERO).error_before_first_token()).await;
    let (frames, err) = frames(&mut body).await;
    assert!(err.is_none(), "ends cleanly");
    let events = one_each(&frames);
    assert_eq!(events[..2], [keep_alive(), keep_alive()]);
    assert_eq!(events.len(), 3, "{events:?}");
    let created = data(&events[2])["created"].clone();
    let expected = format!(
        r#"data: {{"id":"gen-mock-1","object":"chat.completion.chunk","created":{created},"model":"m/x","provider":"MockProvider","error":{{"code":"server_error","message":"Provider disconnected"}},"choices":[{{"index":0,"delta":{{"content":""}},"finish_reason":"error","native_finish_reason":"error"}}]}}"#
    ) + "\n\n";
    assert_eq!(std::str::from_utf8(&frames[2]).unwrap(), expected);
}

#[tokio::test]
async fn error_after_k_tokens_ends_without_done() {
    let tokens = ["a", "b", "c"];
    for (k, sent) in [(0, 0), (1, 1), (2, 2), (3, 3), (9, 3)] {
        let (_, mut body) = open(Reply::stream().tokens(tokens).error_after(k)).await;
        let (frames, err) = frames(&mut body).await;
        assert!(err.is_none());
        let events = one_each(&frames);
        assert_eq!(events.len(), sent + 1, "k = {k}: {events:?}");
        let got: Vec<Value> = events[..sent].iter().map(content).collect();
        assert_eq!(got, tokens[..sent], "k = {k}");
        let last = data(&events[sent]);
        assert_eq!(last["error"]["code"], "server_error");
        assert_eq!(last["choices"][0]["finish_reason"], "error");
        assert!(!events.iter().any(SseEvent::is_done));
    }
}

#[tokio::test]
async fn cut_after_k_tokens_is_a_body_error() {
    for (k, sent) in [(0, 0), (2, 2), (5, 3)] {
        let reply = Reply::stream()
            .tokens(["a", "b", "c"])
            .keep_alive(1, Duration::ZERO)
            .cut_after(k);
        let (_, mut body) = open(reply).await;
        let (frames, err) = frames(&mut body).await;
        let err = err.unwrap_or_else(|| panic!("k = {k}: the body ended cleanly"));
        assert_eq!(err.to_string(), "mock upstream cut the stream");
        let events = one_each(&frames);
        assert_eq!(events[0], keep_alive());
        assert_eq!(events.len(), 1 + sent, "k = {k}: {events:?}");
        assert!(events[1..]
            .iter()
            .all(|e| data(e)["choices"][0]["finish_reason"].is_null()));
        assert!(next(&mut body).await.is_none(), "nothing after the error");
        assert!(body.is_end_stream());
    }
}

#[tokio::test(start_paused = true)]
async fn stall_after_k_tokens_never_ends() {
    let (_, mut body) = open(Reply::stream().tokens(["a", "b", "c"]).stall_after(1)).await;
    let first = next(&mut body).await.unwrap().unwrap();
    assert_eq!(content(&parse_sse(&first)[0]), "a");
    for _ in 0..2 {
        let silent = tokio::time::timeout(Duration::from_secs(3600), next(&mut body)).await;
        assert!(silent.is_err(), "a stalled stream sent {silent:?}");
    }
    assert!(!body.is_end_stream());

    let (_, mut body) = open(Reply::stream().keep_alive(1, SECOND).stall_after(0)).await;
    assert_eq!(parse_sse(&next(&mut body).await.unwrap().unwrap()), [keep_alive()]);
    assert!(tokio::time::timeout(Duration::from_secs(3600), next(&mut body))
        .await
        .is_err());
}

#[tokio::test]
async fn no_done_ends_cleanly_after_usage() {
    let (_, mut body) = open(Reply::stream().tokens(["a"]).no_done()).await;
    let (frames, err) = frames(&mut body).await;
    assert!(err.is_none());
    let events = one_each(&frames);
    assert_eq!(events.len(), 3);
    assert_eq!(content(&events[0]), "a");
    assert_eq!(data(&events[1])["choices"][0]["finish_reason"], "stop");
    assert_eq!(data(&events[2])["usage"]["completion_tokens"], 1);
    assert!(!events.iter().any(SseEvent::is_done));
}

#[tokio::test]
async fn the_last_ending_wins() {
    let (_, mut body) = open(Reply::stream().cut_after(0).no_done().error_after(1)).await;
    let (frames, err) = frames(&mut body).await;
    assert!(err.is_none());
    assert_eq!(data(one_each(&frames).last().unwrap())["error"]["code"], "server_error");
}

// ===== time and laziness =====

#[tokio::test(start_paused = true)]
async fn keep_alives_and_chunk_interval_are_timed() {
    let reply = Reply::stream()
        .tokens(["a", "b"])
        .keep_alive(2, Duration::from_secs(5))
        .chunk_interval(SECOND)
        .latency(Duration::from_secs(3));
    let start = Instant::now();
    let (_, mut body) = open(reply).await;
    assert_eq!(start.elapsed(), Duration::from_secs(3), "latency before the head");

    let mut timeline = Vec::new();
    while let Some(frame) = next(&mut body).await {
        let mut events = parse_sse(&frame.unwrap());
        timeline.push((start.elapsed().as_secs(), events.remove(0)));
    }
    let at: Vec<u64> = timeline.iter().map(|(t, _)| *t).collect();
    assert_eq!(at, [8, 13, 14, 15, 16, 17, 18]);
    assert_eq!(timeline[1].1, keep_alive());
    assert_eq!(content(&timeline[2].1), "a");
    assert!(timeline[6].1.is_done());
}

#[tokio::test(start_paused = true)]
async fn cut_waits_for_the_chunk_interval() {
    let (_, mut body) = open(Reply::stream().tokens(["a"]).chunk_interval(SECOND).cut_after(1)).await;
    let start = Instant::now();
    assert!(next(&mut body).await.unwrap().is_ok());
    assert!(next(&mut body).await.unwrap().is_err());
    assert_eq!(start.elapsed(), 2 * SECOND);
}

#[tokio::test(start_paused = true)]
async fn a_slow_consumer_gets_no_burst() {
    let (_, mut body) = open(Reply::stream().tokens(["a", "b", "c"]).chunk_interval(SECOND)).await;
    assert!(next(&mut body).await.unwrap().is_ok());
    // Nothing is made while nobody polls: after a long pause the next frame
    // still takes its whole interval, and the one after that too.
    tokio::time::sleep(Duration::from_secs(100)).await;
    for _ in 0..2 {
        let asked = Instant::now();
        assert!(next(&mut body).await.unwrap().is_ok());
        assert_eq!(asked.elapsed(), SECOND);
    }
}

/// A short name for what an event is.
fn kind(event: &SseEvent) -> &'static str {
    if *event == keep_alive() {
        return "keep-alive";
    }
    if event.is_done() {
        return "done";
    }
    let v = data(event);
    match v["choices"][0]["finish_reason"].as_str() {
        _ if v["usage"].is_object() => "usage",
        Some("stop") => "stop",
        Some("error") => "error",
        _ => "token",
    }
}

#[tokio::test]
async fn each_poll_makes_exactly_one_event() {
    let (_, mut body) = open(Reply::stream().tokens(["a", "b"]).keep_alive(2, Duration::ZERO)).await;
    let mut kinds = Vec::new();
    for _ in 0..20 {
        // One single poll, not a loop of them.
        let polled = poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
        match polled {
            Poll::Ready(Some(frame)) => {
                let frame = frame.unwrap().into_data().unwrap();
                let events = parse_sse(&frame);
                assert_eq!(events.len(), 1, "{frame:?}");
                kinds.push(kind(&events[0]));
            }
            Poll::Ready(None) => break,
            Poll::Pending => panic!("no delay was scripted"),
        }
    }
    assert_eq!(
        kinds,
        ["keep-alive", "keep-alive", "token", "token", "stop", "usage", "done"]
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_body_mid_sleep_is_fine() {
    let (_, mut body) = open(Reply::stream().chunk_interval(Duration::from_secs(60))).await;
    assert!(tokio::time::timeout(SECOND, next(&mut body)).await.is_err());
    drop(body);
    tokio::time::sleep(Duration::from_secs(120)).await;
}

// ===== parse_sse =====

#[test]
fn parse_sse_reads_comments_data_and_line_ends() {
    let text = ": OPENROUTER PROCESSING\r\n\r\n\
                event: message\nid: 7\ndata: {\"a\":\ndata:1}\n\n\
                :no space\n\
                data:[DONE]\n\n\
                data: cut before its blank line\n";
    assert_eq!(
        parse_sse(text.as_bytes()),
        [
            keep_alive(),
            SseEvent::Data("{\"a\":\n1}".into()),
            SseEvent::Comment("no space".into()),
            SseEvent::Data("[DONE]".into()),
        ]
    );
    assert!(parse_sse(b"data: x").is_empty(), "no line end, no event");
    assert_eq!(parse_sse(b"data\n\n"), [SseEvent::Data(String::new())]);
    assert_eq!(SseEvent::Data("[1]".into()).json(), Some(json!([1])));
    assert_eq!(keep_alive().json(), None);
    assert!(!keep_alive().is_done());
}

// ===== over HTTP =====

/// What a raw HTTP/1.1 client read from one streaming request.
struct Wire {
    head: String,
    /// The de-chunked body.
    body: Vec<u8>,
    /// Whether the body ended with the zero-length last chunk.
    terminated: bool,
}

/// Sends one request with `Connection: close`, reads until the server
/// closes, and undoes the chunked encoding.
async fn raw_stream(server: &MockServer, model: &str) -> Wire {
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let body = chat_body(model);
    let head = format!(
        "POST /api/v1/chat/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.addr(),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut out))
        .await
        .expect("the server closed the connection");
    if let Err(e) = read {
        // A reset keeps what was read before it.
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8(out[..split].to_vec()).unwrap();
    let mut rest = &out[split + 4..];
    let mut body = Vec::new();
    let mut terminated = false;
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap(), 16).unwrap();
        rest = &rest[eol + 2..];
        if size == 0 {
            terminated = rest == b"\r\n";
            break;
        }
        if rest.len() < size + 2 {
            break;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    Wire { head, body, terminated }
}

#[tokio::test]
async fn server_streams_every_event() {
    let reply = Reply::stream().tokens(["Hel", "lo"]).keep_alive(2, Duration::ZERO);
    let server = MockServer::start(MockUpstream::new().model("m/x", reply))
        .await
        .unwrap();
    let wire = raw_stream(&server, "m/x").await;
    let head = wire.head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(wire.terminated, "a complete stream ends its chunked body");
    let events = parse_sse(&wire.body);
    assert_eq!(events.len(), 7, "{events:?}");
    assert_eq!(events[..2], [keep_alive(), keep_alive()]);
    assert_eq!([content(&events[2]), content(&events[3])], ["Hel", "lo"]);
    assert!(events[6].is_done());
}

#[tokio::test]
async fn server_ends_error_and_no_done_streams_cleanly() {
    let up = MockUpstream::new()
        .model("m/err", Reply::stream().error_after(1))
        .model("m/nodone", Reply::stream().no_done());
    let server = MockServer::start(up).await.unwrap();

    let wire = raw_stream(&server, "m/err").await;
    assert!(wire.terminated);
    let events = parse_sse(&wire.body);
    assert_eq!(events.len(), 2);
    assert_eq!(data(&events[1])["choices"][0]["finish_reason"], "error");

    let wire = raw_stream(&server, "m/nodone").await;
    assert!(wire.terminated);
    let events = parse_sse(&wire.body);
    assert_eq!(events.len(), 5);
    assert!(data(&events[4])["usage"].is_object());
}

#[tokio::test]
async fn server_cut_drops_the_connection_mid_body() {
    let up = MockUpstream::new()
        .model("m/cut2", Reply::stream().keep_alive(1, Duration::ZERO).cut_after(2))
        .model("m/cut0", Reply::stream().keep_alive(1, Duration::ZERO).cut_after(0));
    let server = MockServer::start(up).await.unwrap();

    let wire = raw_stream(&server, "m/cut2").await;
    assert!(wire.head.starts_with("HTTP/1.1 200 OK\r\n"), "{}", wire.head);
    assert!(!wire.terminated, "a cut stream must not end its chunked body");
    let events = parse_sse(&wire.body);
    assert_eq!(events.len(), 3, "the frames before the cut arrive: {events:?}");
    assert_eq!(events[0], keep_alive());
    assert_eq!([content(&events[1]), content(&events[2])], ["Hello", " from"]);

    let wire = raw_stream(&server, "m/cut0").await;
    assert!(!wire.terminated);
    assert_eq!(parse_sse(&wire.body), [keep_alive()]);
}

#[tokio::test]
async fn server_cut_is_a_hyper_client_body_error() {
    let up = MockUpstream::new().model("m/x", Reply::stream().cut_after(1));
    let server = MockServer::start(up).await.unwrap();
    let stream = TcpStream::connect(server.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, String>(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post(server.chat_url())
        .header("host", server.addr().to_string())
        .body(chat_body("m/x"))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = Vec::new();
    let err = tokio::time::timeout(Duration::from_secs(30), async {
        for _ in 0..100 {
            match body.frame().await {
                Some(Ok(frame)) => received.extend_from_slice(&frame.into_data().unwrap()),
                Some(Err(e)) => return e,
                None => panic!("the body ended cleanly"),
            }
        }
        panic!("more than 100 frames")
    })
    .await
    .expect("the cut reached the client");
    // hyper reports the missing last chunk as an EOF inside the body.
    let io = std::error::Error::source(&err)
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .unwrap_or_else(|| panic!("not an I/O body error: {err:?}"));
    assert_eq!(io.kind(), std::io::ErrorKind::UnexpectedEof, "{err:?}");
    let events = parse_sse(&received);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(content(&events[0]), "Hello");
}
