//! One DNS exchange over TCP (RFC 7766): a request, signed with TSIG when
//! it is an update, and its answer, checked to be the answer to it (and
//! signed by the same key when the request was), all within one deadline.
//!
//! TCP rather than UDP: answers are never truncated, and an off-path host
//! cannot slip an answer in. The wire format and TSIG are hickory-proto's.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::TSigner;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::TsigRefusal;

/// Why an exchange did not give an answer to use.
#[derive(Debug)]
pub(super) enum Trouble {
    /// No way to the server from here (no route, nothing listening):
    /// known at once, not waited for.
    Unreachable(String),
    /// No connection within the deadline (the address may be one this
    /// host has no working route to), or one refused otherwise.
    NoConnection(String),
    /// Connected, but no answer within the deadline (or the connection
    /// closed or reset before one): the server is up and did not answer.
    NoAnswer(String),
    /// An answer, but not one to trust.
    BadAnswer(String),
}

/// An answer to a request.
pub(super) struct Answer {
    pub(super) message: Message,
    /// The TSIG error the server gave, if it refused the key.
    pub(super) refusal: Option<TsigRefusal>,
    /// Whether the answer carries a valid signature by the request's key.
    pub(super) verified: bool,
}

/// The answer to `request` from `server`, within `timeout`. With a
/// `signer`, the request is signed; a signed answer must verify, and a
/// successful one must be signed. An error answer that is not signed is
/// returned as it is (a server that refuses the key cannot sign with it),
/// marked as not verified.
pub(super) async fn exchange(
    server: SocketAddr,
    mut request: Message,
    signer: Option<&TSigner>,
    timeout: Duration,
) -> Result<Answer, Trouble> {
    let mut verifier = None;
    if let Some(signer) = signer {
        // TSIG time is the real wall clock the server compares with its
        // own, whatever clock the rotator's schedule follows.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        verifier = request
            .finalize(signer, now)
            .map_err(|e| Trouble::BadAnswer(format!("cannot sign the request: {e}")))?;
    }
    let bytes = request
        .to_vec()
        .map_err(|e| Trouble::BadAnswer(format!("cannot encode the request: {e}")))?;
    let length = u16::try_from(bytes.len())
        .map_err(|_| Trouble::BadAnswer("the request is over 64 KiB".into()))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let waited = || Trouble::NoAnswer(format!("no answer within {}", crate::clock::human(timeout)));
    let mut stream = match tokio::time::timeout_at(deadline, TcpStream::connect(server)).await {
        Err(_) => {
            let waited = crate::clock::human(timeout);
            return Err(Trouble::NoConnection(format!(
                "no connection within {waited}"
            )));
        }
        Ok(Err(e)) if unreachable(&e) => return Err(Trouble::Unreachable(e.to_string())),
        Ok(Err(e)) => return Err(Trouble::NoConnection(e.to_string())),
        Ok(Ok(stream)) => stream,
    };
    let answer = tokio::time::timeout_at(deadline, async {
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(&bytes);
        stream.write_all(&framed).await?;
        let length = stream.read_u16().await?;
        let mut answer = vec![0; usize::from(length)];
        stream.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    })
    .await
    .map_err(|_| waited())?
    .map_err(|e| Trouble::NoAnswer(e.to_string()))?;

    let message = Message::from_vec(&answer)
        .map_err(|e| Trouble::BadAnswer(format!("not a DNS message: {e}")))?;
    if message.id != request.id
        || message.message_type != MessageType::Response
        || message.op_code != request.op_code
    {
        return Err(Trouble::BadAnswer(
            "not the answer to the request (its ID or opcode differs)".into(),
        ));
    }
    let refusal = message
        .signature()
        .and_then(|tsig| tsig.data.error)
        .map(|error| TsigRefusal::from_code(error.into()));
    let mut verified = false;
    if let Some(mut verifier) = verifier {
        if message.signature().is_some() && refusal.is_none() {
            verifier.verify(&answer).map_err(|e| {
                Trouble::BadAnswer(format!("the answer's TSIG signature does not verify: {e}"))
            })?;
            verified = true;
        } else if message.response_code == ResponseCode::NoError && refusal.is_none() {
            return Err(Trouble::BadAnswer(
                "the answer is not signed with the TSIG key".into(),
            ));
        }
    }
    Ok(Answer {
        message,
        refusal,
        verified,
    })
}

/// Whether a connection failed at once because the server cannot be
/// reached from here (an IPv6 address on an IPv4-only host, a server that
/// is not running), rather than one that did not answer in time.
fn unreachable(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        NetworkUnreachable | HostUnreachable | AddrNotAvailable | ConnectionRefused
    )
}
