//! The terminal around the live view: raw mode and the alternate screen while
//! it runs, the user's terminal given back however it ends, and key input as
//! an async stream.
//!
//! Restoring happens on drop of [`TerminalGuard`] and in a panic hook, so an
//! error (`?`) or a panic leaves a usable shell. Signals are the caller's job:
//! SIGTERM's default action kills the process without running destructors, so
//! the caller must catch it (as `signals::Shutdown` does), leave its loop and
//! drop the guard. Ctrl-C does not raise SIGINT in raw mode; it arrives as a
//! key, which `tui::App::on_key` turns into `Quit`.

use std::future::poll_fn;
use std::io::{self, BufWriter, Stdout};
use std::pin::Pin;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

use crossterm::event::{Event, EventStream};
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use crossterm::{cursor, execute};
use futures_core::Stream;
use ratatui::Frame;
use ratatui::backend::CrosstermBackend;

/// True while the terminal is in raw mode on the alternate screen, so that
/// restoring twice (drop after a panic hook) is harmless.
static ACTIVE: AtomicBool = AtomicBool::new(false);
static PANIC_HOOK: Once = Once::new();

/// Owns the terminal while the live view runs.
pub struct TerminalGuard {
    /// Buffered so that a frame leaves in one write (ratatui flushes after
    /// each draw): through std's 1 KiB stdout buffer a full screen went out in
    /// about ten writes, and a terminal could show it half drawn.
    terminal: ratatui::Terminal<CrosstermBackend<BufWriter<Stdout>>>,
}

impl TerminalGuard {
    /// Enters raw mode and the alternate screen, hides the cursor, and installs
    /// (once per process) a panic hook that restores the terminal before the
    /// previous hook prints the panic, so the message is readable.
    pub fn enter() -> io::Result<Self> {
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
        });
        ACTIVE.store(true, Ordering::SeqCst);
        let entered = enable_raw_mode()
            .and_then(|()| execute!(io::stdout(), EnterAlternateScreen, cursor::Hide))
            .and_then(|()| {
                ratatui::Terminal::new(CrosstermBackend::new(BufWriter::with_capacity(
                    1 << 16,
                    io::stdout(),
                )))
            });
        match entered {
            Ok(terminal) => Ok(Self { terminal }),
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }

    /// Draws one frame (only the cells that changed reach the terminal).
    pub fn draw(&mut self, render: impl FnOnce(&mut Frame)) -> io::Result<()> {
        self.terminal.draw(render).map(drop)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Gives the terminal back: cooked mode, main screen, visible cursor. Does
/// nothing unless a [`TerminalGuard`] is active; errors are ignored because
/// there is nothing better to do with them while exiting or panicking.
pub fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
    }
}

/// Terminal input (keys, resizes) for an async loop.
///
/// This wraps crossterm's `EventStream` rather than a thread of our own
/// blocking in `crossterm::event::read()`: the stream is cancel-safe in
/// `tokio::select!`, and dropping it stops its helper thread, whereas a
/// blocked reader thread cannot be stopped and would go on eating the
/// shell's input after the view has ended.
pub struct Input {
    stream: EventStream,
}

impl Input {
    pub fn new() -> Self {
        Self {
            stream: EventStream::new(),
        }
    }

    /// The next event; `None` when input has ended.
    pub async fn next(&mut self) -> Option<io::Result<Event>> {
        poll_fn(|cx| Pin::new(&mut self.stream).poll_next(cx)).await
    }
}

impl Default for Input {
    fn default() -> Self {
        Self::new()
    }
}
