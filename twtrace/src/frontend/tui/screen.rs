//! The real terminal: full screen, raw keys, restored when dropped (also on a panic).

use super::model::Model;
use super::state::{Key, ViewState};
use ratatui::crossterm::event::{
    self as ct, Event as CtEvent, KeyCode, KeyEventKind, KeyModifiers,
};
use ratatui::DefaultTerminal;
use std::time::Duration;

/// The terminal in full-screen mode; restored when dropped (and on a panic).
pub struct Screen {
    terminal: DefaultTerminal,
}

impl Screen {
    pub fn start() -> std::io::Result<Screen> {
        Ok(Screen {
            terminal: ratatui::try_init()?,
        })
    }

    pub fn draw(&mut self, m: &Model, v: &ViewState) -> std::io::Result<()> {
        self.terminal.draw(|f| super::draw(f, m, v)).map(|_| ())
    }

    /// Keys typed since the last call, without waiting.
    pub fn keys(&mut self) -> std::io::Result<Vec<Key>> {
        let mut out = Vec::new();
        while ct::poll(Duration::ZERO)? {
            if let CtEvent::Key(k) = ct::read()? {
                if k.kind == KeyEventKind::Release {
                    continue;
                }
                let key = match k.code {
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Key::CtrlC,
                    KeyCode::Char(c) => Key::Char(c),
                    KeyCode::Enter => Key::Enter,
                    KeyCode::Esc => Key::Esc,
                    KeyCode::Backspace => Key::Backspace,
                    _ => continue,
                };
                out.push(key);
            }
        }
        Ok(out)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}
