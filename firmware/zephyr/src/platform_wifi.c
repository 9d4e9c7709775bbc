/* Wi-Fi STA through net_mgmt.  Reports up (after DHCP) and down to the core; the core decides
 * when to (re)associate. */
#include <string.h>

#include <zephyr/kernel.h>
#include <zephyr/net/net_event.h>
#include <zephyr/net/net_if.h>
#include <zephyr/net/net_ip.h>
#include <zephyr/net/net_mgmt.h>
#include <zephyr/net/wifi_mgmt.h>

#include "platform.h"

static struct net_mgmt_event_callback wifi_cb;
static struct net_mgmt_event_callback ipv4_cb;
static struct k_work connect_work;
static char want_ssid[33];
static char want_psk[65];
static K_MUTEX_DEFINE(cred_mutex);
/* Set while we drop an old association ourselves (re-provisioning): that disconnect is not news
 * for the core, which is already waiting for the new association. */
static atomic_t own_disconnect;

static struct net_if *sta(void) { return net_if_get_first_wifi(); }

static int current_rssi(struct net_if *iface)
{
    struct wifi_iface_status st = {0};
    if (net_mgmt(NET_REQUEST_WIFI_IFACE_STATUS, iface, &st, sizeof(st)) != 0) {
        return 0;
    }
    return st.rssi;
}

static void on_wifi_event(struct net_mgmt_event_callback *cb, uint32_t event, struct net_if *iface)
{
    ARG_UNUSED(iface);
    const struct wifi_status *status = (const struct wifi_status *)cb->info;
    if (event == NET_EVENT_WIFI_CONNECT_RESULT && status != NULL && status->status != 0) {
        core_lock();
        prop_wifi_down(&g_core, core_now(), "connect_failed");
        core_unlock();
    } else if (event == NET_EVENT_WIFI_DISCONNECT_RESULT) {
        if (atomic_cas(&own_disconnect, 1, 0)) {
            return;
        }
        core_lock();
        prop_wifi_down(&g_core, core_now(), "disconnected");
        core_unlock();
    }
    /* a successful association is reported when DHCP gives us an address */
}

static void on_ipv4_event(struct net_mgmt_event_callback *cb, uint32_t event, struct net_if *iface)
{
    ARG_UNUSED(cb);
    if (event != NET_EVENT_IPV4_ADDR_ADD) {
        return;
    }
    char ip[NET_IPV4_ADDR_LEN] = "0.0.0.0";
    struct in_addr *addr = net_if_ipv4_get_global_addr(iface, NET_ADDR_PREFERRED);
    if (addr != NULL) {
        (void)net_addr_ntop(AF_INET, addr, ip, sizeof(ip));
    }
    int rssi = current_rssi(iface);
    core_lock();
    prop_wifi_up(&g_core, core_now(), ip, rssi);
    core_unlock();
}

static void do_connect(struct k_work *work)
{
    ARG_UNUSED(work);
    struct wifi_connect_req_params params = {0};
    static char ssid[33];
    static char psk[65];
    k_mutex_lock(&cred_mutex, K_FOREVER);
    memcpy(ssid, want_ssid, sizeof(ssid));
    memcpy(psk, want_psk, sizeof(psk));
    k_mutex_unlock(&cred_mutex);

    params.ssid = (const uint8_t *)ssid;
    params.ssid_length = (uint8_t)strlen(ssid);
    params.psk = (const uint8_t *)psk;
    params.psk_length = (uint8_t)strlen(psk);
    params.security = params.psk_length > 0 ? WIFI_SECURITY_TYPE_PSK : WIFI_SECURITY_TYPE_NONE;
    params.channel = WIFI_CHANNEL_ANY;
    params.band = WIFI_FREQ_BAND_2_4_GHZ;
    params.mfp = WIFI_MFP_OPTIONAL;
    params.timeout = SYS_FOREVER_MS; /* the core owns the timeout */

    struct net_if *iface = sta();
    struct wifi_iface_status st = {0};
    if (iface != NULL && net_mgmt(NET_REQUEST_WIFI_IFACE_STATUS, iface, &st, sizeof(st)) == 0 &&
        st.state >= WIFI_STATE_ASSOCIATED) {
        atomic_set(&own_disconnect, 1);
        (void)net_mgmt(NET_REQUEST_WIFI_DISCONNECT, iface, NULL, 0);
    }
    if (iface == NULL || net_mgmt(NET_REQUEST_WIFI_CONNECT, iface, &params, sizeof(params)) != 0) {
        core_lock();
        prop_wifi_down(&g_core, core_now(), "request_failed");
        core_unlock();
    }
}

void platform_wifi_connect(void *ctx, const char *ssid, const char *psk)
{
    ARG_UNUSED(ctx);
    /* Called with the core lock held: never block here, hand over to the work queue. */
    k_mutex_lock(&cred_mutex, K_FOREVER);
    strncpy(want_ssid, ssid, sizeof(want_ssid) - 1);
    strncpy(want_psk, psk, sizeof(want_psk) - 1);
    k_mutex_unlock(&cred_mutex);
    (void)k_work_submit(&connect_work);
}

int platform_wifi_init(void)
{
    k_work_init(&connect_work, do_connect);
    net_mgmt_init_event_callback(&wifi_cb, on_wifi_event,
                                 NET_EVENT_WIFI_CONNECT_RESULT | NET_EVENT_WIFI_DISCONNECT_RESULT);
    net_mgmt_add_event_callback(&wifi_cb);
    net_mgmt_init_event_callback(&ipv4_cb, on_ipv4_event, NET_EVENT_IPV4_ADDR_ADD);
    net_mgmt_add_event_callback(&ipv4_cb);
    return sta() != NULL ? 0 : -ENODEV;
}
