//! The trace-file reader on arbitrary bytes: it must never panic, loop forever or allocate
//! without bound, whatever the input.
//!
//! Checksums would stop almost every mutation at the first CRC, so unless the input is a trace
//! file as it is (magic, framing, resynchronisation), its first byte picks a mode that computes
//! valid checksums around fuzzed block payloads or fuzzed header fields (record decoding).

#![no_main]

use libfuzzer_sys::fuzz_target;
use twtrace::sink::tracefile::{Reader, MAGIC, SYNC, VERSION_MAJOR, VERSION_MINOR};

fn header(fields: &[u8]) -> Vec<u8> {
    let mut f = MAGIC.to_vec();
    f.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
    f.extend_from_slice(&VERSION_MINOR.to_le_bytes());
    f.extend_from_slice(&(fields.len() as u32).to_le_bytes());
    f.extend_from_slice(&crc32c::crc32c(fields).to_le_bytes());
    f.extend_from_slice(fields);
    f
}

fn block(out: &mut Vec<u8>, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&SYNC);
    out.extend_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

fn read(bytes: &[u8]) {
    if let Ok(mut r) = Reader::new(bytes) {
        let _ = r.header();
        let mut n = 0usize;
        for item in r.events() {
            let _ = item;
            n += 1;
            // Every item consumes at least one input byte.
            assert!(n <= bytes.len() + 1, "more items than bytes");
        }
        let _ = (r.sysctls(), r.summary(), r.skipped_records());
    }
}

fuzz_target!(|data: &[u8]| {
    // A real trace file (it starts with the magic's first byte) is read as it is.
    let Some((&mode, rest)) = data.split_first().filter(|(m, _)| **m != MAGIC[0]) else {
        return read(data);
    };
    match mode % 3 {
        // The rest as a file.
        0 => read(rest),
        // Valid header, then the rest cut into blocks at each 0xff byte.
        1 => {
            let mut f = header(&[]);
            for chunk in rest.split(|b| *b == 0xff) {
                if !chunk.is_empty() {
                    block(&mut f, chunk);
                }
            }
            read(&f);
        }
        // Fuzzed header fields (as many bytes as the next byte says) with a valid checksum,
        // then one fuzzed block.
        _ => {
            let Some((&n, rest)) = rest.split_first() else {
                return;
            };
            let (fields, payload) = rest.split_at((n as usize).min(rest.len()));
            let mut f = header(fields);
            if !payload.is_empty() {
                block(&mut f, payload);
            }
            read(&f);
        }
    }
});
