/// How an arena reaches its files: plain POSIX calls, or (in tests) a layer wrapped around them
/// that injects faults or records writes and flushes.
package struct ArenaFileLayer: Sendable {
    let wrap: @Sendable (PosixArenaFile, ArenaFileRole) -> any ArenaFile

    /// The files themselves.
    package static let posix = ArenaFileLayer { file, _ in file }
}
