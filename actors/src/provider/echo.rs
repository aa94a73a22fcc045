//! `echo`: the built-in provider that sends every caller frame straight back.
//!
//! It is the default route, so a new user hears voxroute work with no keys: the session runs
//! the echoed audio back through its whole egress chain (resample to the client's rate,
//! encode, pace), which makes it a test of everything but the upstream socket.
//!
//! It is an ordinary [`ProviderAdapter`] with [`Endpoint::InProcess`]: the
//! [`ProviderActor`](super::actor::ProviderActor) drives it through the same states as a
//! WebSocket provider (open → `Ready` → audio → `Finish` → `Closed`), without a socket. The
//! audio is moved, not copied: echo adds no per-frame allocation of its own.

use super::adapter::{
    AdapterOutput, CLOSE_NORMAL, Endpoint, ProviderAdapter, ProviderError, WsFrameRef,
};
use super::{ProviderCommand, ProviderEvent};

/// The echo adapter. It has no state.
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoAdapter;

impl EchoAdapter {
    /// A new echo adapter.
    pub fn new() -> Self {
        EchoAdapter
    }
}

impl ProviderAdapter for EchoAdapter {
    fn endpoint(&self) -> Endpoint {
        Endpoint::InProcess
    }

    fn encode(&mut self, command: ProviderCommand, out: &mut AdapterOutput) {
        match command {
            ProviderCommand::Audio(samples) => out.emit(ProviderEvent::Audio(samples)),
            // Echo returns audio only; a key press has no audio to return.
            ProviderCommand::Dtmf { .. } | ProviderCommand::Flush => {}
            // In process, a close request ends the connection at once with
            // `Closed { error: false }`.
            ProviderCommand::Finish => out.close(CLOSE_NORMAL, ""),
        }
    }

    /// Never called: an in-process provider receives no frames. Anything that did arrive
    /// would be ignored and counted.
    fn decode(
        &mut self,
        _frame: WsFrameRef<'_>,
        out: &mut AdapterOutput,
    ) -> Result<(), ProviderError> {
        out.ignore();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::testing::close_code;
    use super::*;

    /// Sans-IO: ready on open, every frame comes back unchanged as an event (no frame goes
    /// on a wire), Finish asks for a normal close.
    #[test]
    fn echoes_and_closes() {
        let mut echo = EchoAdapter::new();
        let mut out = AdapterOutput::new();
        assert_eq!(echo.endpoint(), Endpoint::InProcess);
        echo.on_open(&mut out);
        echo.encode(ProviderCommand::Audio(vec![1, -2, 3]), &mut out);
        echo.encode(ProviderCommand::Finish, &mut out);
        assert_eq!(
            out.events(),
            &[ProviderEvent::Ready, ProviderEvent::Audio(vec![1, -2, 3])]
        );
        assert!(out.frames().is_empty());
        assert_eq!(close_code(&out), Some(CLOSE_NORMAL));
    }
}
