"""What kind of filesystem a path is on (network shares need polling and no SQLite)."""

import os
from pathlib import Path

MOUNTINFO = "/proc/self/mountinfo"

# Filesystems on which another host's writes produce no inotify events, and on
# which SQLite locking cannot be trusted.
NETWORK_FS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "fuse.sshfs",
        "sshfs",
        "9p",
        "virtiofs",
        "vboxsf",
        "fuse.vmhgfs-fuse",
        "afs",
        "ceph",
        "fuse.ceph",
        "glusterfs",
        "fuse.glusterfs",
        "lustre",
        "gpfs",
        "davfs",
        "fuse.rclone",
        "fuse.s3fs",
        "ncpfs",
        "coda",
    }
)


def _unescape_mount(field):
    r"""Undo the octal escapes of /proc/self/mountinfo (``\040`` is a space)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """Parse mountinfo text into ``(mount_point, fstype)`` pairs, in file order.

    Examples
    --------
    >>> parse_mountinfo("36 25 0:32 / /mnt/sharpcap rw - cifs //nas/raw rw")
    [('/mnt/sharpcap', 'cifs')]
    """
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        mounts.append((_unescape_mount(fields[4]), right.split()[0]))
    return mounts


def mount_fstype(path: str | os.PathLike, *, mountinfo: str | None = None) -> str:
    """Filesystem type of the mount holding ``path`` (which need not exist yet).

    Parameters
    ----------
    path : path-like
        Any path; resolved with ``os.path.realpath``.
    mountinfo : str, optional
        Text of /proc/self/mountinfo; read from the file ``MOUNTINFO`` when None.

    Examples
    --------
    >>> mount_fstype("/x/y", mountinfo="1 0 0:1 / / rw - ext4 /dev/sda1 rw")
    'ext4'
    """
    if mountinfo is None:
        try:
            mountinfo = Path(MOUNTINFO).read_text()
        except OSError:
            return "unknown"
    target = os.path.realpath(path)
    best, fstype = -1, "unknown"
    for point, kind in parse_mountinfo(mountinfo):
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        # ">=": a later mount on the same point hides the earlier one
        if inside and len(point) >= best:
            best, fstype = len(point), kind
    return fstype


def is_network_fs(path: str | os.PathLike, *, mountinfo: str | None = None) -> bool:
    """True when ``path`` lives on a network filesystem (NFS, CIFS, sshfs, 9p, ...).

    Examples
    --------
    >>> is_network_fs("/mnt/raw/a.fits", mountinfo="9 1 0:5 / /mnt/raw rw - nfs4 nas:/raw rw")
    True
    """
    return mount_fstype(path, mountinfo=mountinfo) in NETWORK_FS
