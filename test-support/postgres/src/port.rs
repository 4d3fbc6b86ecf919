//! Free TCP ports on 127.0.0.1. The kernel picks one (bind to port 0, read it, close), and a
//! process-wide set of claimed ports keeps it from handing a stopped server's port to another
//! server of this process before that server's `restart`. Another process may still take a
//! port between the close and the server's bind; `TestPostgres::start` retries on that clash.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};

use crate::Error;

/// Ports held by this process's live test servers.
static CLAIMED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A port this process's other test servers will not be given; released on drop.
#[derive(Debug)]
pub(crate) struct PortClaim {
    port: u16,
}

impl PortClaim {
    /// Claims a port that was free a moment ago and no live server of this process holds.
    pub(crate) fn new() -> Result<PortClaim, Error> {
        // The kernel does not hand out a port it gave recently while others are free, so a
        // collision with a claimed port is rare; a few tries are plenty.
        for _ in 0..16 {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .map_err(Error::io("bind a free port on 127.0.0.1"))?;
            let port = listener
                .local_addr()
                .map_err(Error::io("read the free port's number"))?
                .port();
            if CLAIMED
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(port)
            {
                return Ok(PortClaim { port });
            }
        }
        Err(Error::Io {
            action: "find a free port on 127.0.0.1".into(),
            reason: "the kernel kept handing out ports this process's servers hold".into(),
        })
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortClaim {
    fn drop(&mut self) {
        CLAIMED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.port);
    }
}
