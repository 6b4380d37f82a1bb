//! The control socket between the gateway and a runner agent: a Unix `SOCK_SEQPACKET` pair whose
//! agent end is descriptor [`CONTROL_FD`] in the sandbox. The agent uses it to hand the gateway
//! descriptors that only the sandbox can create: the proxy listener bound inside the runner's
//! network namespace, and the pipes of `mcp-stdio` servers it started. Each message is a JSON
//! [`ControlMessage`] with the descriptors attached (`SCM_RIGHTS`).
//!
//! Handing descriptors out of the sandbox means the gateway never has to join any of its
//! namespaces (joining with `setns` would give the joining thread full capabilities in there).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

/// The agent's end of the control socket.
pub const CONTROL_FD: i32 = 3;

/// Descriptors attached to one message at most.
const MAX_FDS: usize = 4;

/// Largest message body.
const MAX_MESSAGE: usize = 64 * 1024;

/// What a control message says about the descriptors it carries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ControlMessage {
    /// The request this answers (0 for the listener sent at start-up).
    pub id: u64,
    /// The descriptor is the proxy listener on `127.0.0.1:3128`.
    #[serde(default)]
    pub listener: bool,
    /// The descriptors are a started server's stdin, stdout and stderr; this is its pid in
    /// the sandbox.
    #[serde(default)]
    pub pid: Option<i32>,
    /// Why the request failed (no descriptors attached).
    #[serde(default)]
    pub error: Option<String>,
}

/// A control socket pair: `(gateway end, agent end)`, both close-on-exec.
pub fn pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(std::io::Error::from)
}

/// Sends `message` with `fds` attached.
pub fn send(
    socket: impl AsFd,
    message: &ControlMessage,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> std::io::Result<()> {
    let body = serde_json::to_vec(message)?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !ancillary.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other(
            "too many descriptors for one message",
        ));
    }
    sendmsg(
        socket,
        &[IoSlice::new(&body)],
        &mut ancillary,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// Receives one message and its descriptors (blocking). End of stream — the agent is gone — is
/// an `UnexpectedEof` error.
pub fn recv(socket: impl AsFd) -> std::io::Result<(ControlMessage, Vec<OwnedFd>)> {
    let mut body = vec![0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let received = recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut body)],
        &mut ancillary,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    if received.bytes == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the runner agent closed its control socket",
        ));
    }
    let message = serde_json::from_slice(&body[..received.bytes])?;
    Ok((message, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn descriptors_cross_the_socket() {
        let (ours, theirs) = pair().expect("pair");
        let (reader, writer) = std::os::unix::net::UnixStream::pair().expect("stream pair");
        let message = ControlMessage {
            id: 7,
            pid: Some(42),
            ..Default::default()
        };
        send(&theirs, &message, &[reader.as_fd()]).expect("send");
        drop(reader);
        let (got, mut fds) = recv(&ours).expect("recv");
        assert_eq!((got.id, got.pid), (7, Some(42)));
        assert_eq!(fds.len(), 1);
        let mut received = std::os::unix::net::UnixStream::from(fds.remove(0));
        let mut writer = writer;
        writer.write_all(b"through").expect("write");
        drop(writer);
        let mut text = String::new();
        received.read_to_string(&mut text).expect("read");
        assert_eq!(text, "through");
    }

    #[test]
    fn a_closed_peer_is_end_of_stream() {
        let (ours, theirs) = pair().expect("pair");
        drop(theirs);
        let err = recv(&ours).expect_err("closed");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
