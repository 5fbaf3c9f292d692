// duplicate-check: Dataverse-style duplicate detection, in C.
//
// A pre-operation step on Create of `account`: it queries the accounts with the
// same name through the organization service and refuses the new one if any
// exists; otherwise it stamps `description` on the record being created (the
// changed Target goes back in the result's input parameters). The step's
// configuration, if given, is the text of the stamp.
//
// Bindings: `plughost component bindgen-c` (plugin.h, plugin.c,
// plugin_component_type.o); build: build.sh.

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin.h"

typedef plughost_plugin_types_parameter_value_t parameter_value_t;

static bool is(const plugin_string_t *s, const char *text) {
    size_t n = strlen(text);
    return s->len == n && memcmp(s->ptr, text, n) == 0;
}

// A string the host will free (after the call, through the post-return function).
static plugin_string_t owned(const char *data, size_t len) {
    plugin_string_t s = {.ptr = malloc(len ? len : 1), .len = len};
    memcpy(s.ptr, data, len);
    return s;
}

static plugin_string_t owned_text(const char *text) {
    return owned(text, strlen(text));
}

// A string that stays ours: for arguments of calls to the host.
static plugin_string_t borrowed(const char *text) {
    return (plugin_string_t){.ptr = (uint8_t *)text, .len = strlen(text)};
}

static void trace(const char *format, ...) {
    char line[512];
    va_list args;
    va_start(args, format);
    int n = vsnprintf(line, sizeof line, format, args);
    va_end(args);
    plugin_string_t message = {.ptr = (uint8_t *)line, .len = n < 0 ? 0 : (size_t)n < sizeof line ? (size_t)n : sizeof line - 1};
    plughost_plugin_tracing_trace(&message);
}

static bool fail(exports_plughost_plugin_handler_plugin_error_t *err, uint8_t kind, const char *format, ...) {
    char text[512];
    va_list args;
    va_start(args, format);
    vsnprintf(text, sizeof text, format, args);
    va_end(args);
    err->tag = kind;
    err->val.permanent = owned_text(text);
    return false;
}

static parameter_value_t *parameter(plughost_plugin_types_list_parameter_t *list, const char *name) {
    for (size_t i = 0; i < list->len; i++) {
        if (is(&list->ptr[i].name, name)) return &list->ptr[i].value;
    }
    return NULL;
}

static plughost_plugin_types_value_t *attribute(plughost_plugin_types_entity_t *e, const char *name) {
    for (size_t i = 0; i < e->attributes.len; i++) {
        if (is(&e->attributes.ptr[i].name, name)) return &e->attributes.ptr[i].value;
    }
    return NULL;
}

bool exports_plughost_plugin_handler_execute(exports_plughost_plugin_handler_execution_context_t *ctx,
                                             exports_plughost_plugin_handler_execution_result_t *ret,
                                             exports_plughost_plugin_handler_plugin_error_t *err) {
    bool ok = false;
    parameter_value_t *target_value = parameter(&ctx->input_parameters, "Target");
    if (target_value == NULL || target_value->tag != PLUGHOST_PLUGIN_TYPES_PARAMETER_VALUE_ENTITY) {
        fail(err, PLUGHOST_PLUGIN_TYPES_PLUGIN_ERROR_PERMANENT, "expected a Target record");
        goto done;
    }
    plughost_plugin_types_entity_t *target = &target_value->val.entity;
    plughost_plugin_types_value_t *name = attribute(target, "name");
    if (name == NULL || name->tag != PLUGHOST_PLUGIN_TYPES_VALUE_TEXT || name->val.text.len == 0) {
        // Nothing to compare: another step (account-number) requires names.
        trace("no name: nothing to check");
        memset(ret, 0, sizeof *ret);
        ok = true;
        goto done;
    }
    char name_text[256];
    snprintf(name_text, sizeof name_text, "%.*s", (int)name->val.text.len, (const char *)name->val.text.ptr);

    // SELECT name FROM account WHERE name = <name>, at most one.
    plughost_plugin_types_value_t wanted = {.tag = PLUGHOST_PLUGIN_TYPES_VALUE_TEXT, .val.text = name->val.text};
    plughost_plugin_types_condition_t same_name = {
        .attribute = borrowed("name"),
        .operator_ = PLUGHOST_PLUGIN_TYPES_CONDITION_OPERATOR_EQUAL,
        .values = {.ptr = &wanted, .len = 1},
    };
    plugin_string_t column = borrowed("name");
    plughost_plugin_types_query_t query = {
        .entity_name = borrowed("account"),
        .columns = {.ptr = &column, .len = 1},
        .criteria = {.operator_ = PLUGHOST_PLUGIN_TYPES_LOGICAL_OPERATOR_AND, .conditions = {.ptr = &same_name, .len = 1}},
        .top = {.is_some = true, .val = 1},
    };
    plughost_plugin_types_entity_collection_t found;
    plughost_plugin_types_service_error_t service_error;
    if (!plughost_plugin_organization_service_retrieve_multiple(&query, &found, &service_error)) {
        plugin_string_t *m = &service_error.val.failed;
        fail(err, PLUGHOST_PLUGIN_TYPES_PLUGIN_ERROR_RETRYABLE, "the duplicate check could not query accounts: %.*s",
             (int)m->len, (const char *)m->ptr);
        plughost_plugin_types_service_error_free(&service_error);
        goto done;
    }
    size_t duplicates = found.entities.len;
    plughost_plugin_types_entity_collection_free(&found);
    if (duplicates > 0) {
        fail(err, PLUGHOST_PLUGIN_TYPES_PLUGIN_ERROR_PERMANENT, "An account named '%s' exists already (duplicate detection)",
             name_text);
        goto done;
    }

    // Stamp the record: the changed Target goes back whole. It moves out of the
    // context into the result (the context keeps a null in its place).
    const char *stamp = "checked for duplicates (C)";
    char configured[256];
    if (ctx->configuration.is_some && ctx->configuration.val.len > 0) {
        snprintf(configured, sizeof configured, "%.*s", (int)ctx->configuration.val.len,
                 (const char *)ctx->configuration.val.ptr);
        stamp = configured;
    }
    plughost_plugin_types_entity_t record = *target;
    target_value->tag = PLUGHOST_PLUGIN_TYPES_PARAMETER_VALUE_VALUE;
    target_value->val.value.tag = PLUGHOST_PLUGIN_TYPES_VALUE_NULL;
    plughost_plugin_types_value_t *description = attribute(&record, "description");
    if (description != NULL) {
        plughost_plugin_types_value_free(description);
    } else {
        size_t n = record.attributes.len;
        record.attributes.ptr = realloc(record.attributes.ptr, (n + 1) * sizeof *record.attributes.ptr);
        record.attributes.ptr[n].name = owned_text("description");
        record.attributes.len = n + 1;
        description = &record.attributes.ptr[n].value;
    }
    description->tag = PLUGHOST_PLUGIN_TYPES_VALUE_TEXT;
    description->val.text = owned_text(stamp);

    memset(ret, 0, sizeof *ret);
    ret->input_parameters.ptr = malloc(sizeof *ret->input_parameters.ptr);
    ret->input_parameters.len = 1;
    ret->input_parameters.ptr[0].name = owned_text("Target");
    ret->input_parameters.ptr[0].value.tag = PLUGHOST_PLUGIN_TYPES_PARAMETER_VALUE_ENTITY;
    ret->input_parameters.ptr[0].value.val.entity = record;
    trace("no account named '%s' yet", name_text);
    ok = true;
done:
    plughost_plugin_types_execution_context_free(ctx);
    return ok;
}
