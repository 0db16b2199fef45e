/* SPDX-License-Identifier: MIT */
/*
 * Consistency check and refcount repair for qcow2 images, the engine behind
 * "lockstep-img check".  It reads the on-disk metadata through the image's
 * protocol node only (never through the qcow2 driver), rebuilds the
 * reference count of every host cluster from the header, L1/L2 tables,
 * snapshots, refcount structures and bitmaps, and compares it with the
 * stored refcounts.  Keeping it independent of the driver is the point: the
 * tests use it to catch driver bugs, so it must not share the driver's
 * assumptions.  Results and the problem lines it prints follow "qemu-img
 * check" so that both tools can be compared on the same image.
 */
#ifndef LOCKSTEP_QCOW2_CHECK_H
#define LOCKSTEP_QCOW2_CHECK_H

#include <stdint.h>
#include <stdio.h>

#include "lockstep/driver.h"
#include "lockstep/err.h"

/*
 * Check the qcow2 image whose bytes are node file (a protocol node; it must
 * be writable when fix is non-zero).  Each problem is printed as one line
 * to log (NULL: silent).  The driver's check hook: fix and res are the
 * block layer's (BLOCK_CHECK_FIX_*, struct block_check_result).  Returns
 * 0 when the check ran to the end (res says what it found), or -errno
 * with *errp set when it could not start: not a qcow2 image, a header
 * that qcow2_header_decode() (the decoder open uses) refuses,
 * encryption, unreadable, no memory.  The backing chain and data file are
 * the caller's to open (lockstep-img does).  What lies past the end of
 * the file reads as zeroes, as for the driver and QEMU.
 *
 * Repair: BLOCK_CHECK_FIX_LEAKS lowers refcounts that exceed the
 * references (and fixes COPIED flags when nothing else is wrong);
 * BLOCK_CHECK_FIX_ERRORS also raises refcounts below the references,
 * fixes COPIED flags, and when refcount blocks are missing or broken
 * writes a new refcount structure at the end of the file.  Bad L1/L2
 * entries themselves (reserved bits, unaligned offsets, invalid subcluster
 * bitmaps, references past the end) are reported, never rewritten.
 * Fixed problems count in *_fixed, not in corruptions/leaks.
 */
int qcow2_check(struct block_node *file, unsigned fix, FILE *log,
                struct block_check_result *res, struct err **errp);

#endif
