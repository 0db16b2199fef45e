# SPDX-License-Identifier: MIT
"""lockstep-img measure against qemu-img measure 7.2: the same numbers
and the same messages for new images (--size) and for images converted
into raw or qcow2 (-f/-O, -o cluster_size, preallocation, backing_file,
compat, extended_l2, refcount_bits), with persistent bitmaps, in human
and JSON output (QEMU's iotests 178 and 190 do the same).

Our tool runs by the name qemu-img (a symlink), so that its messages
carry the same prefix.
"""
import os

import pytest

from conftest import built_program, host_tool, run

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def tools(build_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("measure-bin")
    ours = str(d / "qemu-img")
    os.symlink(built_program(build_dir, "lockstep-img"), ours)
    return ours, host_tool("qemu-img"), host_tool("qemu-io")


def same(tools, argv):
    ours, qimg, _ = tools
    a = run([ours, "measure"] + argv)
    b = run([qimg, "measure"] + argv)
    assert (a.returncode, a.stdout, a.stderr) == \
        (b.returncode, b.stdout, b.stderr), argv
    return a


SIZE_CASES = [
    "--size 0", "--size 1000", "--size 2G", "--size 64G", "--size 1T",
    "--size 2P", "--size 7E",
    "-O qcow2 --size 0", "-O qcow2 --size 1000", "-O qcow2 --size 10M",
    "-O qcow2 --size 2G", "-O qcow2 --size 64G", "-O qcow2 --size 256G",
    "-O qcow2 --size 1T", "-O qcow2 --size 2P", "-O qcow2 --size 7E",
    "-O raw --size 1000",
    "-O qcow2 -o cluster_size=512 --size 1G",
    "-O qcow2 -o cluster_size=2M --size 2T",
    "-O qcow2 -o cluster_size=2M,extended_l2=on --size 7E",
    "-O qcow2 -o extended_l2=on --size 1G",
    "-O qcow2 -o refcount_bits=1 --size 1G",
    "-O qcow2 -o refcount_bits=64 --size 1G",
    "-O qcow2 -o preallocation=full --size 1G",
    "-O qcow2 -o preallocation=falloc --size 1G",
    "-O qcow2 -o preallocation=metadata --size 1G",
    "-O qcow2 -o compat=0.10 --size 1G",
    "-O qcow2 -o backing_file=x --size 1G",
    "-O qcow2 -o lazy_refcounts=on --size 1G",
    "-O raw -o preallocation=full --size 1G",
    # Errors
    "", "-O qcow2", "-O qcow2 -o cluster_size=1000 --size 1G",
    "-O qcow2 -o cluster_size=4M --size 1G",
    "-O qcow2 -o extended_l2=on,cluster_size=4k --size 1G",
    "-O qcow2 -o refcount_bits=3 --size 1G",
    "-O qcow2 -o preallocation=bogus --size 1G",
    "-O qcow2 -o foo=bar --size 1G", "-O raw -o cluster_size=64k --size 1G",
    "-O foo --size 1G", "-o , --size 1G", "--output foo --size 1G",
    "--size -1", "-f qcow2", "--image-opts",
]


@pytest.mark.parametrize("output", ["human", "json"])
@pytest.mark.parametrize("case", SIZE_CASES)
def test_measure_size_as_qemu(tools, case, output):
    same(tools, ["--output=" + output] + case.split())


def make_source(tools, d, fmt, size, writes, bitmaps=()):
    _, qimg, qio = tools
    img = os.path.join(d, "src." + fmt)
    r = run([qimg, "create", "-q", "-f", fmt, img, size])
    assert r.returncode == 0, r.stderr
    for w in writes:
        r = run([qio, "-f", fmt, "-c", w, img])
        assert r.returncode == 0, r.stdout + r.stderr
    for name, gran in bitmaps:
        r = run([qimg, "bitmap", "--add", "-g", gran, "-f", fmt, img, name])
        assert r.returncode == 0, r.stderr
    return img


WRITES = ["write 512 512", "write 64K 64K", "write 128M 63K",
          "write -z 300M 1M", "write 511M 1k"]
TARGETS = ["-O raw", "-O qcow2", "-O qcow2 -o cluster_size=4k",
           "-O qcow2 -o cluster_size=2M", "-O qcow2 -o extended_l2=on",
           "-O qcow2 -o preallocation=full", "-O qcow2 -o backing_file=x",
           "-O qcow2 -o compat=0.10", "-O qcow2 -o refcount_bits=2"]


@pytest.mark.parametrize("output", ["human", "json"])
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("target", TARGETS)
def test_measure_image_as_qemu(tools, tmp_path, fmt, target, output):
    img = make_source(tools, str(tmp_path), fmt, "512M", WRITES)
    same(tools, ["--output=" + output, "-f", fmt] + target.split() + [img])


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_measure_empty_and_full_images(tools, tmp_path, fmt):
    d = str(tmp_path)
    img = make_source(tools, d, fmt, "0", [])
    same(tools, ["-f", fmt, "-O", "qcow2", img])
    os.unlink(img)
    img = make_source(tools, d, fmt, "8M", ["write 0 8M"])
    same(tools, ["-f", fmt, "-O", "qcow2", img])
    same(tools, ["-O", "qcow2", img])   # probed
    same(tools, ["--image-opts", "-O", "qcow2",
                 "driver=%s,file.filename=%s" % (fmt, img)])


@pytest.mark.parametrize("target", ["-O qcow2", "-O qcow2 -o cluster_size=2M",
                                    "-O qcow2 -o compat=0.10", "-O raw"])
@pytest.mark.parametrize("output", ["human", "json"])
def test_measure_bitmaps_as_qemu(tools, tmp_path, target, output):
    """iotest 190: a qcow2 source's persistent bitmaps, sized in the
    target's clusters; none for a v2 or raw target."""
    img = make_source(tools, str(tmp_path), "qcow2", "1G",
                      ["write 100M 64k"], [("b1", "512"), ("b2", "2M")])
    same(tools, ["--output=" + output, "-f", "qcow2"] + target.split() +
         [img])
    # The same file read as raw: no bitmaps.
    same(tools, ["-f", "raw", "-O", "qcow2", img])
