//! Classic tracepoints' record layouts, from tracefs's `format` files at load time (never
//! compiled in: they change across kernel versions).

use std::path::{Path, PathBuf};

/// Where tracefs is mounted, if it is.
pub fn root() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// The offset of `field` in the record of tracepoint `category/name`.
pub fn field_offset(category: &str, name: &str, field: &str) -> Option<u32> {
    let p = root()?
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    parse_offset(&std::fs::read_to_string(Path::new(&p)).ok()?, field)
}

/// The offset of `field` in a tracepoint `format` text (`field:TYPE NAME;\toffset:N;…`).
pub fn parse_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        let name = decl.split_whitespace().last()?.trim_start_matches('*');
        if name != field {
            return None;
        }
        let off = line
            .split(';')
            .find_map(|p| p.trim().strip_prefix("offset:"))?;
        off.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_from_a_format_file() {
        let f = "name: sys_enter_bind\nID: 2238\nformat:\n\
                 \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
                 \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
                 \tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;\n\
                 \tfield:struct sockaddr * umyaddr;\toffset:24;\tsize:8;\tsigned:0;\n";
        assert_eq!(parse_offset(f, "umyaddr"), Some(24));
        assert_eq!(parse_offset(f, "fd"), Some(16));
        assert_eq!(parse_offset(f, "ret"), None);
    }
}
