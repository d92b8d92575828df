# Консоль по-русски. Каждый id есть и в en.ftl (это проверяет модульный тест).

nav-devices = Устройства
nav-tasks = Задачи
switch-language = English
logout = Выйти
times-in-zone = Время указано в поясе { $zone }; UTC — во всплывающей подсказке.
admin = администратор
operator = оператор
viewer = наблюдатель
vendor = поставщик

login-title = Вход
login-name = Имя
login-password = Пароль
login-enter = Войти
login-wrong = Неверное имя или пароль.
login-locked = Слишком много неверных паролей: учётная запись заблокирована до { $until }. Подождите или обратитесь к администратору.
login-now-locked = Слишком много неверных паролей: учётная запись заблокирована на 15 минут.

fail-forbidden = Ваша роль этого не позволяет. Попросите администратора дать вам роль оператора.
fail-csrf = Форма устарела (она из прежнего входа или с другого сайта). Обновите страницу и повторите.
fail-form = Форму не удалось прочитать. Обновите страницу и повторите.
fail-refused = Сервер отказал:
fail-internal = Ошибка сервера; подробности в его журнале. Повторите и сообщите администратору, если ошибка повторится.

devices-count = { $count ->
    [one] { $count } устройство
    [few] { $count } устройства
   *[many] { $count } устройств
}
devices-more = { $count ->
    [one] и ещё { $count } устройство
    [few] и ещё { $count } устройства
   *[many] и ещё { $count } устройств
}
filter-any = все
filter-search = поиск
filter-apply = Найти
online = в сети
offline = не в сети
never = никогда
page-prev = назад
page-next = далее
page-of = страница { $page }
devices-page-not-number = Страница «{ $value }» — не целое число от 1: показана первая страница.
devices-number-not-number = Номер должен быть целым числом; «{ $value }» — нет, поэтому по номеру список не отфильтрован.
device-no-such = Устройства { $id } нет: возможно, его удалили. Найдите его в списке устройств.

col-guid = GUID
col-site = Магазин
col-address = Адрес
col-name = Касса
col-number = Номер
col-device-type = Тип устройства
col-loaded-package = Загруженный пакет
col-version = Версия
col-connection = Связь

agent-version = Версия агента
enrolled = Подключено
tags = Метки
inventory = Установка
inventory-error = Терминал не смог прочитать свою установку
agent-message = Сообщение агента
inventory-none = Терминал ещё не сообщил о своей установке.
inv-product = Продукт
inv-modules = Модули
inv-state = Состояние
inv-pending-sync = Данные ждут синхронизации
inv-ready = Готов
inv-reboot-required = Нужна перезагрузка
yes = да
no = нет
device-updates = Обновления
task = Задача
task-kind = Тип
task-state = Статус задачи
device-state = Состояние
step = Шаг
message = Сообщение
waits-because = Ждёт, потому что
updated = Обновлено

kind-download = Загрузка
kind-update = Обновление
kind-forced-update = Принудительное обновление
task-scheduled = Запланирована
task-running = Выполняется
task-paused = Приостановлена
task-finished = Завершена
device-pending = ожидает
device-running = выполняется
device-waiting = ждёт
device-success = успешно
device-failed = ошибка
wait-window = вне окна обслуживания
wait-site-limit = достигнут лимит магазина
wait-order = сначала другой тип устройств
wait-not-now = не сейчас
wait-until = снова в { $time }

tasks-all = Все
task-new = Новая задача
task-name = Название
task-name-hint = если пусто — из типа и пакета
task-package = Пакет
task-group = Группа
task-start = Запуск
task-start-now = немедленно
task-start-at = в
task-notice-override = Запустить раньше 24 часов после объявления, потому что
task-create = Создать задачу
task-new-kind-missing = Выберите тип: загрузка, обновление или принудительное обновление.
task-new-group-missing = Выберите группу устройств для задачи.
task-new-package-missing = Выберите пакет, который задача установит.
task-new-time-invalid = Укажите существующие дату и время запуска ({ $zone }) или выберите «немедленно».
task-no-such = Задачи { $id } нет: возможно, её удалили. Найдите её в списке задач.
count-total = всего
count-offline = не в сети
count-inprogress = в процессе
count-failed = с ошибкой
count-success = успешно
task-pause = Приостановить
task-resume = Продолжить
task-restart = Перезапустить
task-delete = Удалить
task-delete-ask = Удалить задачу? История её устройств сохранится.

nav-accounts = Учётные записи
account-role = Роль
account-language = Язык
account-time-zone = Часовой пояс
account-locked = Заблокирована до
account-created = Создана
account-new = Новая учётная запись
account-create = Создать учётную запись
account-delete-ask = Удалить учётную запись? Её сеансы сразу закончатся.
account-own-password = Мой пароль
account-password-current = Текущий пароль
account-password-new = Новый пароль
account-password-again = Тот же пароль ещё раз
account-password-change = Сменить пароль
account-password-changed = Пароль изменён; другие ваши сеансы завершены.
account-password-short = Пароль должен быть не короче { $min } символов.
account-password-mismatch = Пароли различаются: введите один и тот же пароль дважды.
account-password-wrong = Текущий пароль неверен.
account-name-missing = Укажите имя учётной записи.
account-role-missing = Выберите роль: наблюдатель, оператор или администратор.

nav-packages = Пакеты
package-upload = Загрузить пакет
package-file = Файл
package-uploaded = Загружен и прочитан плагином типа устройств.
package-upload-failed = Загрузка отклонена:
package-no-device-type = Ни у одного типа устройств ещё нет плагина: пакет читает плагин его типа устройств, поэтому сначала включите плагин.
package-kind = Вид
package-size = Размер
package-state = Состояние
package-notes = Примечание
package-changelog = Изменения
package-uploaded-at = Загружен
package-current = Текущий
package-install = Установка
package-signed = подписан
package-no-rollback = без отката
package-set-current = Сделать текущим
package-delete-ask = Удалить пакет?

nav-plugins = Плагины
plugins-bundled = Плагины, встроенные в сервер
plugins-bundled-about = Включение создаёт типы устройств плагина и разрешает то, что он просит, с каталогами в обычных местах posup (/opt/<тип>, /var/lib/posup/<тип>, /var/log/<тип>); где они на самом деле и что выдать, решает собственная конфигурация терминала.
plugins-enable = Включить { $name }
plugins-device-types = Типы устройств
plugins-description = Описание
plugins-plugin = Плагин
plugins-granted = Выдано
plugins-allowed = Разрешено на сервере
plugins-ceiling = Терминал выдаёт плагину только то, что разрешает и его собственная конфигурация: это потолок.
plugins-uploaded = Загруженные плагины
plugins-vendor = Поставщик
plugins-requested = Просит
plugins-interface = Интерфейс
plugins-enabled-for = Включён для
plugins-signature = Подпись
plugins-signed = подписан поставщиком
plugins-unsigned = не подписан

nav-groups = Группы
group-all = Все
group-even = Чётные
group-odd = Нечётные
group-static = список
group-filter = фильтр
group-name = Название
group-kind = Вид
group-description = Описание
group-filter-conditions = Условия
group-new = Новая группа
group-create = Создать группу
group-save = Сохранить
group-members = Устройства группы
group-remove-ticked = Убрать отмеченные устройства
group-add-guids = Добавить устройства по GUID, по одному в строке
group-add = Добавить
group-delete-ask = Удалить группу? Устройства останутся.
group-name-missing = Укажите название группы.
group-filter-missing = Группе-фильтру нужно хотя бы одно условие.
group-no-such = Группы { $id } нет: возможно, её удалили.
group-unknown-guids = Нет устройства с GUID { $guids }: проверьте список.
group-none-ticked = Сначала отметьте устройства с ошибкой.
group-new-or-existing = Укажите название новой группы или выберите существующую.
group-from-task = Ошибка в задаче { $task }
group-failed-to = Отмеченные устройства с ошибкой поместить в
group-failed-new = новую группу с названием
group-failed-existing = или в группу
group-failed-go = Собрать
