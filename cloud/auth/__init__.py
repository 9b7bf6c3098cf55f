"""People and gateways: who is calling (tokens, sessions, roles), users and their
passwords and logins, gateway tokens. Authorization decisions are ``check_role``,
``require_gateway`` and ``require_read``; the FastAPI dependency built on them is
``cloud.api.deps.require``.
"""

from __future__ import annotations

from cloud.auth.credentials import (
    ROLES,
    SESSION_ABSOLUTE,
    SESSION_COOKIE,
    Actor,
    AuthError,
    authenticate,
    check_role,
    hash_token,
    require_gateway,
    require_read,
)
from cloud.auth.gateways import (
    GatewayExists,
    UnknownGateway,
    check_gateway_id,
    create_gateway,
    revoke_gateway,
)
from cloud.auth.users import (
    MAX_FAILURES_PER_ADDRESS,
    MAX_FAILURES_PER_NAME,
    UnknownUser,
    UserError,
    UserExists,
    check_password,
    check_user_name,
    create_api_token,
    create_api_token_in,
    create_user,
    create_user_in,
    get_user,
    login,
    logout,
    revoke_api_token_in,
    set_locale_in,
    set_password,
    set_password_in,
    update_user_in,
)
from cloud.auth.users import prune as prune_logins

__all__ = [
    "MAX_FAILURES_PER_ADDRESS",
    "MAX_FAILURES_PER_NAME",
    "ROLES",
    "SESSION_ABSOLUTE",
    "SESSION_COOKIE",
    "Actor",
    "AuthError",
    "GatewayExists",
    "UnknownGateway",
    "UnknownUser",
    "UserError",
    "UserExists",
    "authenticate",
    "check_gateway_id",
    "check_password",
    "check_role",
    "check_user_name",
    "create_api_token",
    "create_api_token_in",
    "create_gateway",
    "create_user",
    "create_user_in",
    "get_user",
    "hash_token",
    "login",
    "logout",
    "prune_logins",
    "require_gateway",
    "require_read",
    "revoke_api_token_in",
    "revoke_gateway",
    "set_locale_in",
    "set_password",
    "set_password_in",
    "update_user_in",
]
