# The console in English. Every id here is also in ru.ftl (a unit test checks).

nav-devices = Devices
nav-tasks = Tasks
switch-language = Русский
logout = Log out
times-in-zone = Times are in { $zone }; hover for UTC.
admin = administrator
operator = operator
viewer = viewer
vendor = vendor

login-title = Log in
login-name = Name
login-password = Password
login-enter = Log in
login-wrong = Wrong name or password.
login-locked = Too many wrong passwords: this account is locked until { $until }. Wait, or ask an administrator.
login-now-locked = Too many wrong passwords: this account is now locked for 15 minutes.

fail-forbidden = Your role does not allow this. Ask an administrator for the operator role.
fail-csrf = This form is out of date (it came from an earlier login or another site). Reload the page and try again.
fail-form = The form could not be read. Reload the page and try again.
fail-refused = The server refused this:
fail-internal = The server failed; its log has the details. Try again, and tell the administrator if it happens again.

devices-count = { $count ->
    [one] { $count } device
   *[other] { $count } devices
}
devices-more = { $count ->
    [one] and { $count } more device
   *[other] and { $count } more devices
}
filter-any = any
filter-search = search
filter-apply = Search
online = online
offline = offline
never = never
page-prev = previous
page-next = next
page-of = page { $page }
devices-page-not-number = The page “{ $value }” is not a whole number from 1: the first page is shown.
devices-number-not-number = No. must be a whole number; “{ $value }” is not, so the list is not filtered by it.
device-no-such = There is no device { $id }: it may have been deleted. Find it in the device list.

col-guid = GUID
col-site = Store
col-address = Address
col-name = Register
col-number = No.
col-device-type = Device type
col-loaded-package = Loaded package
col-version = Version
col-connection = Connection

agent-version = Agent version
enrolled = Enrolled
tags = Tags
inventory = Installation
inventory-error = The terminal could not read its installation
agent-message = The agent says
inventory-none = The terminal has not reported its installation yet.
inv-product = Product
inv-modules = Modules
inv-state = State
inv-pending-sync = Data waiting to sync
inv-ready = Ready
inv-reboot-required = Reboot required
yes = yes
no = no
device-updates = Updates
task = Task
task-kind = Type
task-state = Task state
device-state = State
step = Step
message = Message
waits-because = Waits because
updated = Updated

kind-download = Download
kind-update = Update
kind-forced-update = Forced update
task-scheduled = Scheduled
task-running = Running
task-paused = Paused
task-finished = Finished
device-pending = pending
device-running = in progress
device-waiting = waiting
device-success = success
device-failed = failed
wait-window = outside the maintenance window
wait-site-limit = the store's limit is reached
wait-order = another device type goes first
wait-not-now = not now
wait-until = again at { $time }

tasks-all = All
task-new = New task
task-name = Name
task-name-hint = made from the type and package when empty
task-package = Package
task-group = Group
task-start = Start
task-start-now = immediately
task-start-at = at
task-notice-override = Start sooner than 24 hours after the announcement, because
task-create = Create task
task-new-kind-missing = Choose a type: Download, Update or Forced update.
task-new-group-missing = Choose the group of devices the task is for.
task-new-package-missing = Choose the package the task installs.
task-new-time-invalid = Give the start as a date and time ({ $zone }) that exists, or choose “immediately”.
task-no-such = There is no task { $id }: it may have been deleted. Find it in the task list.
count-total = total
count-offline = offline
count-inprogress = in progress
count-failed = failed
count-success = success
task-pause = Pause
task-resume = Resume
task-restart = Restart
task-delete = Delete
task-delete-ask = Delete this task? Its devices' history stays.

nav-accounts = Accounts
account-role = Role
account-language = Language
account-time-zone = Time zone
account-locked = Locked until
account-created = Created
account-new = New account
account-create = Create account
account-delete-ask = Delete this account? Its sessions end at once.
account-own-password = My password
account-password-current = Current password
account-password-new = New password
account-password-again = The same password again
account-password-change = Change password
account-password-changed = Your password is changed; your other sessions are logged out.
account-password-short = A password needs at least { $min } characters.
account-password-mismatch = The two passwords differ: type the same password twice.
account-password-wrong = The current password is wrong.
account-name-missing = Give the account a name.
account-role-missing = Choose a role: viewer, operator or administrator.

nav-packages = Packages
package-upload = Upload a package
package-file = File
package-uploaded = Uploaded and read by the device type's plugin.
package-upload-failed = The upload was refused:
package-no-device-type = No device type has a plugin enabled yet: a package is read by its device type's plugin, so enable one first.
package-kind = Kind
package-size = Size
package-state = State
package-notes = Note
package-changelog = Changes
package-uploaded-at = Uploaded
package-current = Current
package-install = Install
package-signed = signed
package-no-rollback = cannot be rolled back
package-set-current = Make current
package-delete-ask = Delete this package?

nav-plugins = Plugins
plugins-bundled = Plugins built into this server
plugins-bundled-about = Enabling one creates its device types, allowing what the plugin asks for, with its directories in posup's usual places (/opt/<type>, /var/lib/posup/<type>, /var/log/<type>); each terminal's own configuration still says where they are and what it grants.
plugins-enable = Enable { $name }
plugins-device-types = Device types
plugins-description = Description
plugins-plugin = Plugin
plugins-granted = Granted
plugins-allowed = Allowed on the server
plugins-ceiling = A terminal grants a plugin only what its own configuration allows as well: that is the ceiling.
plugins-uploaded = Uploaded plugins
plugins-vendor = Vendor
plugins-requested = Asks for
plugins-interface = Interface
plugins-enabled-for = Enabled for
plugins-signature = Signature
plugins-signed = signed by its vendor
plugins-unsigned = not signed
