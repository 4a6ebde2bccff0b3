import ArgumentParser
import MemSnap

struct DoctorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Report what this machine offers memsnap: kernel, pages, huge pages, memfd."
    )

    func run() throws {
        let report = SystemReport.current()
        var table = Table(columns: ["check", "", "found"])
        for entry in report.entries {
            table.append([entry.name, entry.usable ? "ok" : "NO", entry.value])
        }
        print(table.rendered())
    }
}
