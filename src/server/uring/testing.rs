//! Test support shared by the ring's own tests (`uring/tests.rs`) and the backend-interface tests
//! (`net/tests.rs`): skipping where io_uring is not usable, and loopback socket pairs.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{IntoRawFd, RawFd};

/// The backend `made`, or None (with the reason printed) where this kernel or process cannot run io_uring,
/// unless `COREMQ_REQUIRE_URING` is set. Any other error fails the test.
pub(crate) fn usable<T>(made: io::Result<T>) -> Option<T> {
    match made {
        Ok(b) => Some(b),
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {
            assert!(
                std::env::var_os("COREMQ_REQUIRE_URING").is_none(),
                "io_uring required but unsupported: {e}"
            );
            eprintln!("skipped: io_uring unsupported here: {e}");
            None
        }
        Err(e) => panic!("io_uring backend: {e}"),
    }
}

/// A connected loopback pair: (broker side as a raw non-blocking fd with TCP_NODELAY, as accepted connections
/// are, peer side).
pub(crate) fn tcp_pair() -> (RawFd, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (srv, _) = l.accept().unwrap();
    srv.set_nonblocking(true).unwrap();
    srv.set_nodelay(true).unwrap();
    (srv.into_raw_fd(), peer)
}
