//! What the user chose: sort column, pause, filter, network namespace; and the keys that
//! change it. No drawing here.

/// Columns the peer table can be sorted by (`s` cycles).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Timewait,
    Rate,
    Pressure,
    Exhaustion,
    Lifetime,
    Exits,
    Failures,
    Remote,
}

impl SortKey {
    pub const ALL: [SortKey; 8] = [
        SortKey::Timewait,
        SortKey::Rate,
        SortKey::Pressure,
        SortKey::Exhaustion,
        SortKey::Lifetime,
        SortKey::Exits,
        SortKey::Failures,
        SortKey::Remote,
    ];

    pub fn next(self) -> SortKey {
        let i = Self::ALL.iter().position(|k| *k == self).unwrap_or(0);
        Self::ALL[(i + 1) % Self::ALL.len()]
    }

    /// The column title it sorts by.
    pub fn column(self) -> &'static str {
        match self {
            SortKey::Timewait => "TW",
            SortKey::Rate => "NEW/s",
            SortKey::Pressure => "PORTS",
            SortKey::Exhaustion => "EXHAUST",
            SortKey::Lifetime => "MEDIAN",
            SortKey::Exits => "EXITS",
            SortKey::Failures => "CFAIL",
            SortKey::Remote => "REMOTE",
        }
    }
}

/// What the user chose: sort, pause, filter, netns.
#[derive(Clone, Debug)]
pub struct ViewState {
    pub sort: SortKey,
    pub paused: bool,
    /// Rows whose netns, addresses or note contain this (case-insensitive).
    pub filter: String,
    /// The filter being typed after `/`.
    pub editing: Option<String>,
    /// `None`: every netns.
    pub netns: Option<u32>,
    pub quit: bool,
}

impl Default for ViewState {
    fn default() -> Self {
        ViewState {
            sort: SortKey::Timewait,
            paused: false,
            filter: String::new(),
            editing: None,
            netns: None,
            quit: false,
        }
    }
}

/// A key, reduced to what the view cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Backspace,
    CtrlC,
}

impl ViewState {
    /// Applies a key; `netns` lists the namespaces `n` cycles through. Returns whether the
    /// screen should be redrawn.
    pub fn on_key(&mut self, key: Key, netns: &[u32]) -> bool {
        if key == Key::CtrlC {
            self.quit = true;
            return true;
        }
        if let Some(text) = &mut self.editing {
            match key {
                Key::Char(c) => text.push(c),
                Key::Backspace => {
                    text.pop();
                }
                Key::Enter => {
                    self.filter = self.editing.take().unwrap_or_default();
                }
                Key::Esc => self.editing = None,
                Key::CtrlC => {}
            }
            return true;
        }
        match key {
            Key::Char('q') | Key::Esc => self.quit = true,
            Key::Char('s') => self.sort = self.sort.next(),
            Key::Char('p') => self.paused = !self.paused,
            Key::Char('/') => self.editing = Some(self.filter.clone()),
            Key::Char('n') => {
                self.netns = match self.netns.and_then(|c| netns.iter().position(|n| *n == c)) {
                    None if self.netns.is_none() => netns.first().copied(),
                    None => None,
                    Some(i) => netns.get(i + 1).copied(),
                }
            }
            _ => return false,
        }
        true
    }
}
