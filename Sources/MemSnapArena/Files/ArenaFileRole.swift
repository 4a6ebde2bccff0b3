/// What an arena file is for, so a test's file layer can treat the heap and the log apart.
enum ArenaFileRole: Sendable {
    case heap
    case log
}
