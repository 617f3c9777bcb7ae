FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
RUN npm run build && npm prune --omit=dev

FROM node:24-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
# Reachable from outside the container, which turns authentication on: pass
# ORISUN_ADMIN_PASSWORD (docker run -e ORISUN_ADMIN_PASSWORD=...) for the first admin.
ENV ORISUN_HOST=0.0.0.0
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
EXPOSE 50051
USER node
CMD ["node", "dist/server/main.js"]
