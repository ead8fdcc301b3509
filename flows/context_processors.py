from django.conf import settings
from django.http import HttpRequest

from flows import roles


def app(request: HttpRequest) -> dict[str, object]:
    user = getattr(request, "user", None)
    role = roles.role_of(user)
    return {
        "demo_mode": settings.DEMO_MODE,
        "user_role": role,
        "can_operate": roles.has_role(user, roles.OPERATOR),
        "is_admin": roles.has_role(user, roles.ADMIN),
    }
