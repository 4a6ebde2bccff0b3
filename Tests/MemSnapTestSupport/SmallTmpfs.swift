#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// A tmpfs of a few MiB mounted under a fresh temporary directory, for filling a disk on
/// purpose (ENOSPC). Unmounted, and the directory removed, when the value goes away.
///
/// Mounting needs CAP_SYS_ADMIN (root, outside a restricted container): tests use
/// `.enabled(if: SmallTmpfs.isPermitted, SmallTmpfs.notPermittedReason)` so they are skipped,
/// with that reason, where it is not allowed.
public final class SmallTmpfs {
    private let directory: TemporaryDirectory
    /// The mount point: write files here.
    public var path: String { directory.path }

    /// Mounts a tmpfs of `bytes` (rounded up to pages by the kernel); nil if mount(2) fails.
    public init?(bytes: Int) {
        directory = TemporaryDirectory(prefix: "memsnap-tmpfs")
        guard mount("tmpfs", directory.path, "tmpfs", 0, "size=\(bytes),mode=0700") == 0 else { return nil }
    }

    deinit {
        // Lazy unmount: a descriptor a failed test left open must not keep the mount alive.
        if umount2(directory.path, 0) != 0 { umount2(directory.path, Int32(MNT_DETACH)) }
    }

    public var entries: [String] { directory.entries }

    /// Whether this process may mount a tmpfs (tried once, on a throwaway mount).
    public static let isPermitted: Bool = SmallTmpfs(bytes: 1 << 20) != nil

    public static let notPermittedReason: Comment =
        "mount(2) of a tmpfs is not permitted here (it needs CAP_SYS_ADMIN): the full-disk tests are skipped"
}
