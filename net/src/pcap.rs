//! `--pcap FILE`: every frame the switch carries, in libpcap format (link type Ethernet).

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::rc::Rc;
use std::time::SystemTime;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, TsResolution};

use crate::error::{Error, Result};

/// Snap length: the largest frame a 65520-byte MTU gives, so nothing is cut.
const SNAPLEN: u32 = 65535 + 14;

/// The file behind the pcap writer, shared so that it can be flushed (the writer hides it).
#[derive(Clone)]
struct Shared(Rc<RefCell<BufWriter<File>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

/// A capture file being written.
pub struct Capture {
    writer: PcapWriter<Shared>,
    file: Shared,
    /// Frames that could not be written (disk full...): counted, never fatal.
    pub write_errors: u64,
}

impl Capture {
    /// Creates (truncates) `path` and writes the pcap file header.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn create(path: &Path) -> Result<Self> {
        let what = || format!("--pcap {}", path.display());
        let file = File::create(path).map_err(|e| Error::io(what(), e))?;
        let header = PcapHeader {
            snaplen: SNAPLEN,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::MicroSecond,
            endianness: Endianness::native(),
            ..Default::default()
        };
        let file = Shared(Rc::new(RefCell::new(BufWriter::with_capacity(
            1 << 16,
            file,
        ))));
        let writer = PcapWriter::with_header(file.clone(), header)
            .map_err(|e| Error::io(what(), std::io::Error::other(e.to_string())))?;
        Ok(Capture {
            writer,
            file,
            write_errors: 0,
        })
    }

    /// Records one frame, stamped with the wall-clock time.
    pub fn record(&mut self, frame: &[u8]) {
        let ts = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let len = frame.len().min(SNAPLEN as usize);
        let pkt = PcapPacket::new(ts, frame.len() as u32, &frame[..len]);
        if self.writer.write_packet(&pkt).is_err() {
            self.write_errors += 1;
        }
    }

    /// Pushes buffered records to the file.
    pub fn flush(&mut self) {
        if self.file.flush().is_err() {
            self.write_errors += 1;
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_readable_capture() {
        let path = std::env::temp_dir().join(format!("skiff-pcap-{}.pcap", std::process::id()));
        {
            let mut c = Capture::create(&path).unwrap();
            c.record(&[0xffu8; 60]);
            c.record(&[1u8; 1514]);
        }
        let data = std::fs::read(&path).unwrap();
        let mut r = pcap_file::pcap::PcapReader::new(&data[..]).unwrap();
        assert_eq!(r.next_packet().unwrap().unwrap().data.len(), 60);
        assert_eq!(r.next_packet().unwrap().unwrap().data.len(), 1514);
        assert!(r.next_packet().is_none());
        std::fs::remove_file(&path).unwrap();
    }
}
