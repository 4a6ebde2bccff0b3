#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import SystemPackage

/// Temporary files removed when SIGINT, SIGTERM or SIGHUP ends the process, so an interrupted
/// checkpoint or restore leaves no `.NAME.tmp-XXXX` behind.
///
/// memsnap registers every temporary file it creates (checkpoint outputs, restore staging) for as
/// long as it exists under its temporary name. The handlers are process-wide and therefore the
/// application's choice: the `memsnap` tool installs them at start; a library user calls
/// `installHandlers()` once if it wants the same. Without them registration costs nothing and
/// signals behave as before.
///
/// The handler (C, async-signal-safe: a fixed table of 64 paths, no allocation) unlinks every
/// registered path, restores the signal's default disposition and raises it again, so the
/// process still ends with the signal as its exit status. A path registered while the table is
/// full, or longer than 4095 bytes, is simply not removed on a signal.
///
/// Thread safety: every function may be called from any thread.
public enum TemporaryFileCleanup {
    /// The signals that end a command-line process by default and can be handled.
    public static let defaultSignals: [Int32] = [SIGINT, SIGTERM, SIGHUP]

    /// Installs the cleanup handler for `signals` (replacing other handlers for them; a signal
    /// that is currently ignored stays ignored). Installing twice is harmless.
    /// - Throws: `.systemCall("sigaction")` for a signal that cannot be handled.
    public static func installHandlers(for signals: [Int32] = defaultSignals) throws(MemSnapError) {
        for signal in signals {
            let result = memsnap_cleanup_install(signal)
            guard result == 0 else {
                throw MemSnapError("install the temporary-file cleanup handler for signal \(signal)",
                                   .systemCall("sigaction", Errno(rawValue: result)))
            }
        }
    }

    /// A path registered for removal on a signal. Unregister it once the file is renamed or
    /// removed (a later signal would otherwise unlink whatever then has that name).
    public struct Registration: Sendable {
        fileprivate let slot: Int32
    }

    /// Registers `path` (made absolute against the current directory, so a later chdir does not
    /// matter). Returns nil when it cannot be registered (the table is full, or the path is too
    /// long); the file is then not removed on a signal, which callers accept as a best effort.
    public static func register(_ path: String) -> Registration? {
        let absolute: String
        if path.hasPrefix("/") {
            absolute = path
        } else {
            guard let directory = getcwd(nil, 0) else { return nil }
            defer { free(directory) }
            absolute = String(cString: directory) + "/" + path
        }
        let slot = memsnap_cleanup_register(absolute)
        return slot >= 0 ? Registration(slot: slot) : nil
    }

    /// Forgets `registration`; call it after renaming or removing the file.
    public static func unregister(_ registration: Registration) {
        memsnap_cleanup_unregister(registration.slot)
    }
}
