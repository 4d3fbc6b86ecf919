//! An SMTP sink: a task on 127.0.0.1 that speaks enough SMTP (EHLO/HELO, MAIL FROM, RCPT TO,
//! DATA, RSET, NOOP, QUIT; no STARTTLS, no AUTH) to take every message a client sends, and
//! keeps them for the test to read. A message is recorded before the sink answers its DATA,
//! so once a sender has been told "sent", the message is here.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Longest message the sink takes; a longer one fails the test that sent it.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The envelope sender (MAIL FROM).
    pub from: String,
    /// The envelope recipients (RCPT TO).
    pub to: Vec<String>,
    /// The message (headers and body), dot-unstuffed, CRLF line ends.
    pub data: String,
}

impl Received {
    /// A header of the message (the first with this name), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        header(self.data.split("\r\n\r\n").next()?, name)
    }

    /// The decoded body of the first MIME part whose Content-Type starts with `content_type`
    /// (`text/plain`, `text/html`), in a single- or one-level multipart message.
    pub fn part(&self, content_type: &str) -> Option<String> {
        let (head, body) = self.data.split_once("\r\n\r\n")?;
        let top = header(head, "Content-Type")?;
        let Some(boundary) = parameter(&top, "boundary") else {
            return top
                .starts_with(content_type)
                .then(|| decode(head, body))
                .flatten();
        };
        let delimiter = format!("--{boundary}");
        for part in body.split(delimiter.as_str()).skip(1) {
            let part = part.strip_prefix("\r\n").unwrap_or(part);
            let Some((part_head, part_body)) = part.split_once("\r\n\r\n") else {
                continue;
            };
            if header(part_head, "Content-Type").is_some_and(|t| t.starts_with(content_type)) {
                let part_body = part_body.strip_suffix("\r\n").unwrap_or(part_body);
                return decode(part_head, part_body);
            }
        }
        None
    }
}

/// What the sink has seen.
#[derive(Default)]
struct Seen {
    messages: Vec<Received>,
    /// The verb of every command, in order, over all sessions.
    verbs: Vec<String>,
}

/// The sink: every message received so far, in order.
pub struct SmtpSink {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

impl SmtpSink {
    /// Binds 127.0.0.1:0 and serves until dropped.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let kept = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, Arc::clone(&kept)));
            }
        });
        Self { addr, seen, task }
    }

    /// `smtp://127.0.0.1:PORT`, for the control plane's `smtp_url`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Every message received so far.
    pub fn messages(&self) -> Vec<Received> {
        self.seen.lock().unwrap().messages.clone()
    }

    /// The verb of every command received so far (`EHLO`, `MAIL`, `AUTH`…).
    pub fn verbs(&self) -> Vec<String> {
        self.seen.lock().unwrap().verbs.clone()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One SMTP session, until QUIT or the client goes away.
async fn session(stream: TcpStream, seen: Arc<Mutex<Seen>>) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    if reply(&mut writer, "220 sink ESMTP ready").await.is_err() {
        return;
    }
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let command = line.trim_end().to_owned();
        let verb = command
            .split([' ', ':'])
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        seen.lock().unwrap().verbs.push(verb.clone());
        let answer = match verb.as_str() {
            "EHLO" => "250-sink greets you\r\n250-8BITMIME\r\n250 SMTPUTF8".to_owned(),
            "HELO" | "NOOP" => "250 OK".to_owned(),
            "RSET" => {
                (from, to) = (String::new(), Vec::new());
                "250 OK".to_owned()
            }
            "MAIL" => {
                from = path(&command);
                to.clear();
                "250 OK".to_owned()
            }
            "RCPT" => {
                to.push(path(&command));
                "250 OK".to_owned()
            }
            "DATA" => {
                if reply(&mut writer, "354 end with <CRLF>.<CRLF>")
                    .await
                    .is_err()
                {
                    return;
                }
                let Some(data) = read_data(&mut reader).await else {
                    return;
                };
                seen.lock().unwrap().messages.push(Received {
                    from: std::mem::take(&mut from),
                    to: std::mem::take(&mut to),
                    data,
                });
                "250 OK queued".to_owned()
            }
            "QUIT" => {
                let _ = reply(&mut writer, "221 bye").await;
                return;
            }
            _ => "502 command not implemented".to_owned(),
        };
        if reply(&mut writer, &answer).await.is_err() {
            return;
        }
    }
}

/// Sends one reply (possibly several lines) and its line end.
async fn reply(writer: &mut OwnedWriteHalf, text: &str) -> std::io::Result<()> {
    writer.write_all(format!("{text}\r\n").as_bytes()).await
}

/// The message after DATA, up to the line with a lone dot, dot-unstuffed.
async fn read_data(reader: &mut BufReader<OwnedReadHalf>) -> Option<String> {
    let mut data = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line == ".\r\n" || line == ".\n" {
            return Some(data);
        }
        let unstuffed = line.strip_prefix('.').unwrap_or(&line);
        data.push_str(unstuffed);
        assert!(
            data.len() <= MAX_MESSAGE_BYTES,
            "message too large for the sink"
        );
    }
}

/// The address in `MAIL FROM:<a@b>` or `RCPT TO:<a@b>`.
fn path(command: &str) -> String {
    command
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(address, _)| address.to_owned())
        .unwrap_or_default()
}

/// A header's value in a header block, folded lines joined.
fn header(head: &str, name: &str) -> Option<String> {
    let mut value: Option<String> = None;
    for line in head.split("\r\n") {
        match &mut value {
            Some(value) if line.starts_with([' ', '\t']) => value.push_str(line.trim_start()),
            Some(_) => break,
            None => {
                if let Some((field, rest)) = line.split_once(':')
                    && field.eq_ignore_ascii_case(name)
                {
                    value = Some(rest.trim().to_owned());
                }
            }
        }
    }
    value
}

/// A `name=value` parameter of a header value (`boundary="…"`).
fn parameter(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim_matches('"').to_owned())
    })
}

/// A part's body decoded by its Content-Transfer-Encoding (7bit, 8bit, quoted-printable,
/// base64).
fn decode(head: &str, body: &str) -> Option<String> {
    let encoding = header(head, "Content-Transfer-Encoding")
        .unwrap_or_default()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "base64" => {
            let compact: String = body.split_whitespace().collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(compact)
                .ok()?;
            String::from_utf8(bytes).ok()
        }
        "quoted-printable" => {
            let mut bytes = Vec::new();
            let raw = body.replace("=\r\n", "");
            let mut rest = raw.as_bytes();
            while let Some((&byte, tail)) = rest.split_first() {
                if byte == b'=' && tail.len() >= 2 {
                    let hex = std::str::from_utf8(&tail[..2]).ok()?;
                    bytes.push(u8::from_str_radix(hex, 16).ok()?);
                    rest = &tail[2..];
                } else {
                    bytes.push(byte);
                    rest = tail;
                }
            }
            String::from_utf8(bytes).ok()
        }
        _ => Some(body.to_owned()),
    }
}
