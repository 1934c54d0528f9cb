"""virtio-blk: a raw disk image as a virtio-mmio block device.

Source: *Virtual I/O Device (VIRTIO) Version 1.2*, OASIS CS01, 5.2 Block
Device: device ID 2, one virtqueue (requestq); 5.2.3 Feature bits
(VIRTIO_BLK_F_SEG_MAX 2, _RO 5, _BLK_SIZE 6, _FLUSH 9, _WRITE_ZEROES 14);
5.2.4 Device configuration layout (``capacity`` in 512-byte sectors at 0,
``seg_max`` at 12, ``blk_size`` at 20, ``max_write_zeroes_sectors`` at 48,
``max_write_zeroes_seg`` at 52, ``write_zeroes_may_unmap`` at 56); 5.2.6
Device Operation: a request is ``struct virtio_blk_req { le32 type; le32
reserved; le64 sector; u8 data[]; u8 status; }`` with the header
device-readable and the status byte the last device-writable byte; types
IN 0, OUT 1, FLUSH 4, GET_ID 8 (20 bytes of serial), WRITE_ZEROES 13
(segments ``{le64 sector; le32 num_sectors; le32 flags}``); statuses OK 0,
IOERR 1, UNSUPP 2. 5.2.6.2: the device MUST NOT make assumptions about how
the request is split into descriptors; with VIRTIO_BLK_F_RO it fails writes;
a FLUSH completes only once earlier writes are on stable storage (here: the
image file's ``fsync``).

A request past the end of the disk, a data length that is not whole
sectors, or one larger than :data:`MAX_REQUEST` gets IOERR; a chain with no
device-writable byte for the status is refused (DEVICE_NEEDS_RESET). The
device reaches its image only through the ``disk`` it is handed (offsets
are checked against the capacity before every access), never another file.
"""

import os
import stat

from .virtio_mmio import VirtioMmio, VirtioRefusal

__all__ = ['VirtioBlk', 'DiskImage', 'BytesDisk', 'DiskError', 'DEVICE_ID_BLK', 'SECTOR',
           'T_IN', 'T_OUT', 'T_FLUSH', 'T_GET_ID', 'T_WRITE_ZEROES', 'S_OK', 'S_IOERR',
           'S_UNSUPP', 'F_SEG_MAX', 'F_RO', 'F_BLK_SIZE', 'F_FLUSH', 'F_WRITE_ZEROES',
           'MAX_REQUEST', 'SEG_MAX', 'ID_BYTES']

DEVICE_ID_BLK = 2
SECTOR = 512
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_WRITE_ZEROES = 0, 1, 4, 8, 13
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
F_SEG_MAX, F_RO, F_BLK_SIZE, F_FLUSH, F_WRITE_ZEROES = 1 << 2, 1 << 5, 1 << 6, 1 << 9, 1 << 14
HEADER = 16
ID_BYTES = 20
SEG_MAX = 126                   # data segments per request (the queue holds 256 descriptors)
MAX_REQUEST = 64 << 20          # data bytes per read or write request
MAX_ZEROES_SECTORS = 1 << 16    # per write-zeroes segment (32 MiB)
ZERO_CHUNK = 1 << 20


class DiskError(ValueError):
    """A disk image that cannot be used; the message says why and what to do."""


class DiskImage:
    """A raw image file: ``read(offset, n)``, ``write(offset, data)``,
    ``flush()`` (fsync), ``size`` in bytes, ``readonly``, ``serial`` (the
    GET_ID string: the file's name, at most 20 bytes).

    Opening checks what a user can get wrong, each a :class:`DiskError`:
    a missing path, a directory or other non-regular file, a file without
    read permission, or without write permission when asked read-write
    (the permission bits count for root too: an image nobody may read is a
    mistake, not a disk)."""

    def __init__(self, path, readonly=False):
        self.path, self.readonly = path, bool(readonly)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise DiskError(f'disk image {path!r} does not exist: give the path of a raw image '
                            'file (create one with truncate -s 64M FILE)') from None
        except OSError as e:
            raise DiskError(f'disk image {path!r}: {e.strerror}') from None
        if stat.S_ISDIR(st.st_mode):
            raise DiskError(f'disk image {path!r} is a directory: give a raw image file')
        if not stat.S_ISREG(st.st_mode):
            raise DiskError(f'disk image {path!r} is not a regular file: give a raw image file')
        if not st.st_mode & 0o444 or not os.access(path, os.R_OK):
            raise DiskError(f'disk image {path!r} is not readable: chmod +r it, or give another')
        if not readonly and (not st.st_mode & 0o222 or not os.access(path, os.W_OK)):
            raise DiskError(f'disk image {path!r} is not writable: add ",ro" to use it read-only')
        try:
            self.fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as e:
            raise DiskError(f'disk image {path!r}: {e.strerror}') from None
        self.size = os.fstat(self.fd).st_size
        self.serial = os.path.basename(path).encode(errors='replace')[:ID_BYTES]

    def read(self, offset, n):
        data = os.pread(self.fd, n, offset)
        return data + bytes(n - len(data))

    def write(self, offset, data):
        if self.readonly:
            raise OSError('read-only disk')
        view = memoryview(data)
        while view:
            done = os.pwrite(self.fd, view, offset)
            view, offset = view[done:], offset + done

    def flush(self):
        if not self.readonly:
            os.fsync(self.fd)

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __repr__(self):
        return f'DiskImage({self.path!r}, readonly={self.readonly})'


class BytesDisk:
    """A disk in a ``bytearray`` (a RAM disk; tests use it): the
    :class:`DiskImage` interface. ``flushes`` counts flushes."""

    def __init__(self, data, readonly=False, serial=b'ramdisk'):
        self.data, self.readonly, self.serial = bytearray(data), bool(readonly), serial
        self.size = len(self.data)
        self.flushes = 0

    def read(self, offset, n):
        return bytes(self.data[offset:offset + n])

    def write(self, offset, data):
        if self.readonly:
            raise OSError('read-only disk')
        self.data[offset:offset + len(data)] = data

    def flush(self):
        self.flushes += 1

    def close(self):
        pass


class VirtioBlk(VirtioMmio):
    """One disk. Wiring: ``irq``, ``memory`` and ``disk`` (a
    :class:`DiskImage` or :class:`BytesDisk`; None leaves the slot empty:
    DeviceID 0, which the driver ignores). Counters: ``reads``, ``writes``,
    ``flushes``, ``io_errors`` (requests answered IOERR), ``unsupported``."""

    QUEUES = 1
    COUNTERS = VirtioMmio.COUNTERS + ('reads', 'writes', 'flushes', 'io_errors', 'unsupported')
    _STATS = ('reads', 'writes', 'flushes', 'io_errors', 'unsupported', 'bytes_read',
              'bytes_written')

    def __init__(self, irq=None, memory=None, disk=None):
        self.disk = disk
        for k in self._STATS:
            setattr(self, k, 0)
        super().__init__(irq=irq, memory=memory)

    @property
    def DEVICE_ID(self):                # noqa: N802 - the transport's class constant
        return DEVICE_ID_BLK if self.disk is not None else 0

    @property
    def capacity(self):
        return self.disk.size // SECTOR if self.disk is not None else 0

    @property
    def FEATURES(self):                 # noqa: N802
        ro = F_RO if self.disk is not None and self.disk.readonly else 0
        return F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_WRITE_ZEROES | ro

    def config_bytes(self):
        c = bytearray(60)
        c[0:8] = self.capacity.to_bytes(8, 'little')
        c[12:16] = SEG_MAX.to_bytes(4, 'little')
        c[20:24] = SECTOR.to_bytes(4, 'little')
        c[48:52] = MAX_ZEROES_SECTORS.to_bytes(4, 'little')
        c[52:56] = (1).to_bytes(4, 'little')
        return bytes(c)

    def device_state(self):
        return {k: getattr(self, k) for k in self._STATS}

    def load_device_state(self, state):
        for k in self._STATS:
            setattr(self, k, int(state[k]))

    # -- requests --
    def serve(self, queue, chain):
        total = chain.writable_size
        if total == 0:
            raise VirtioRefusal('block request without a device-writable status byte')
        header = chain.read_all(HEADER)
        if len(header) < HEADER:
            return self._finish(chain, S_IOERR, total)
        kind = int.from_bytes(header[0:4], 'little')
        sector = int.from_bytes(header[8:16], 'little')
        data_in = total - 1                     # writable bytes before the status
        if kind == T_IN:
            status, data = self._read(sector, data_in)
            if status == S_OK:
                chain.write_all(data + bytes((S_OK,)))
                return total
            return self._finish(chain, status, total)
        if kind == T_OUT:
            return self._finish(chain, self._write(sector, chain), total)
        if kind == T_FLUSH:
            return self._finish(chain, self._flush(), total)
        if kind == T_GET_ID:
            if data_in < ID_BYTES:
                return self._finish(chain, S_IOERR, total)
            serial = (self.disk.serial + bytes(ID_BYTES))[:ID_BYTES]
            chain.write_all(serial)
            return self._finish(chain, S_OK, total, ID_BYTES)
        if kind == T_WRITE_ZEROES:
            return self._finish(chain, self._write_zeroes(chain), total)
        self.unsupported += 1
        return self._finish(chain, S_UNSUPP, total)

    def _finish(self, chain, status, total, data=0):
        """Write the status byte (the last writable byte); the used length."""
        if status == S_IOERR:
            self.io_errors += 1
        chain.write_all(bytes((status,)), skip=total - 1)
        return data + 1

    def _range_ok(self, sector, length):
        return (length % SECTOR == 0 and length <= MAX_REQUEST
                and sector + length // SECTOR <= self.capacity)

    def _read(self, sector, length):
        if not self._range_ok(sector, length):
            return S_IOERR, b''
        try:
            data = self.disk.read(sector * SECTOR, length)
        except OSError:
            return S_IOERR, b''
        self.reads += 1
        self.bytes_read += length
        return S_OK, data

    def _write(self, sector, chain):
        length = chain.readable_size - HEADER
        if self.disk.readonly or not self._range_ok(sector, length):
            return S_IOERR
        data = chain.read_all(HEADER + length)[HEADER:]
        try:
            self.disk.write(sector * SECTOR, data)
        except OSError:
            return S_IOERR
        self.writes += 1
        self.bytes_written += length
        return S_OK

    def _flush(self):
        try:
            self.disk.flush()
        except OSError:
            return S_IOERR
        self.flushes += 1
        return S_OK

    def _write_zeroes(self, chain):
        if self.disk.readonly:
            return S_IOERR
        body = chain.read_all(HEADER + 16)[HEADER:]
        if len(body) != 16 or chain.readable_size != HEADER + 16:
            return S_IOERR                      # max_write_zeroes_seg is 1
        sector = int.from_bytes(body[0:8], 'little')
        count = int.from_bytes(body[8:12], 'little')
        flags = int.from_bytes(body[12:16], 'little')
        if flags & ~1 or count > MAX_ZEROES_SECTORS or sector + count > self.capacity:
            return S_IOERR
        offset, left = sector * SECTOR, count * SECTOR
        try:
            while left:
                n = min(left, ZERO_CHUNK)
                self.disk.write(offset, bytes(n))
                offset, left = offset + n, left - n
        except OSError:
            return S_IOERR
        self.writes += 1
        self.bytes_written += count * SECTOR
        return S_OK
