# SPDX-License-Identifier: MIT
"""Just enough of the qcow2 layout for tests to read and patch images by
hand, independent of the driver under test."""
import struct


class Qcow2:
    """Header fields, and 64-bit words read or written at file offsets
    (L1 and L2 entries, refcount table entries)."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            h = f.read(112)
        self.cluster_bits = struct.unpack(">I", h[20:24])[0]
        self.cs = 1 << self.cluster_bits
        self.l1_offset = struct.unpack(">Q", h[40:48])[0]
        self.rt_offset = struct.unpack(">Q", h[48:56])[0]
        self.refcount_order = struct.unpack(">I", h[96:100])[0]

    def read64(self, off):
        with open(self.path, "rb") as f:
            f.seek(off)
            return struct.unpack(">Q", f.read(8))[0]

    def write64(self, off, v):
        with open(self.path, "r+b") as f:
            f.seek(off)
            f.write(struct.pack(">Q", v))

    def l2_entry_pos(self, l1_index, l2_index):
        l2 = self.read64(self.l1_offset + 8 * l1_index) & 0x00fffffffffffe00
        return l2 + 8 * l2_index

    def set_refcount(self, cluster, value):
        """Only for 16-bit refcounts and the first refcount block."""
        assert self.refcount_order == 4
        rb = self.read64(self.rt_offset)
        with open(self.path, "r+b") as f:
            f.seek(rb + 2 * cluster)
            f.write(struct.pack(">H", value))

    def grow(self, clusters):
        with open(self.path, "r+b") as f:
            f.seek(0, 2)
            f.truncate(f.tell() + clusters * self.cs)
