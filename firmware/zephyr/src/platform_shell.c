/* `prop provision key=value ...` and `prop status` (console protocol: see README). */
#include <errno.h>

#include <zephyr/kernel.h>
#include <zephyr/shell/shell.h>

#include "platform.h"

static int cmd_provision(const struct shell *sh, size_t argc, char **argv)
{
    static prop_config_t next;
    char err[96];
    core_lock();
    next = g_core.cfg;
    core_unlock();
    if (prop_provision_parse(&next, (int)argc - 1, (const char *const *)&argv[1], err, sizeof(err)) != 0) {
        shell_print(sh, "ERROR %s", err);
        return -EINVAL;
    }
    if (platform_settings_save(&next) != 0) {
        shell_print(sh, "ERROR could not save settings");
        return -EIO;
    }
    core_lock();
    prop_reprovision(&g_core, &next, core_now()); /* logs the `provisioned` event */
    core_unlock();
    shell_print(sh, "OK");
    return 0;
}

static int cmd_status(const struct shell *sh, size_t argc, char **argv)
{
    ARG_UNUSED(argc);
    ARG_UNUSED(argv);
    char line[192];
    core_lock();
    prop_status_line(&g_core, core_now(), line, sizeof(line));
    core_unlock();
    shell_print(sh, "%s", line);
    shell_print(sh, "OK");
    return 0;
}

SHELL_STATIC_SUBCMD_SET_CREATE(prop_cmds,
    SHELL_CMD_ARG(provision, NULL,
                  "ssid=S psk=P broker=HOST:PORT proplet_id=ID api_key=K domain=D channel=C",
                  cmd_provision, 1, 10),
    SHELL_CMD_ARG(status, NULL, "state, links, tasks, heap, uptime", cmd_status, 1, 0),
    SHELL_SUBCMD_SET_END);

SHELL_CMD_REGISTER(prop, &prop_cmds, "Propeller proplet", NULL);
